"""Data, decoding, tensor cache, framework workers, metrics, reports and the command line."""
