"""scan-export: backbone + chosen cluster head -> ONNX -> versioned Triton model repository.

Not implemented yet (tracked as the "scan-export" issue); nothing in this package is usable.
"""
