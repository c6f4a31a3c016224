"""Data files shipped with emgkey (prompt corpus, LM text)."""
