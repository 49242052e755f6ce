"""The shapes world, the embedded toy model trained on it, and the judge that scores images of it."""
