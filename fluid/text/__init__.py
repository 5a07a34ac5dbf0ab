"""Text conditioning: frozen encoders (MiniLM, T5, precomputed) and the trainable aligner."""
