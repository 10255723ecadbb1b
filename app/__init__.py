"""The demo apps (Gradio and Streamlit) and their helpers, installed as the package ``clel_app``."""
