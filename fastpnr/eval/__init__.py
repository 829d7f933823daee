"""evaluation: features, linear probe, kNN, the official protocol, collapse measures, offline evaluation."""
