"""The Hugging Face Hub: downloads with progress, resume and cancel, and what their errors mean."""
