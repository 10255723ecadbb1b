"""The demo apps (Gradio and Streamlit) and their helpers, installed as the package ``clel_app``."""
import os

# No usage statistics from the Gradio app. Gradio reads the switch when it is imported, so it is set before any
# module here imports it; an importer's own setting stands.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
