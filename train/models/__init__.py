"""CTC models: streaming students and offline teachers."""
