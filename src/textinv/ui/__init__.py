"""`textinv ui`: a Gradio app over the library (train, generate, concepts). Needs the `ui` extra (gradio)."""
