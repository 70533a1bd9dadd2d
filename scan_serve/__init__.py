"""scan-serve: the gRPC gateway (ClassifyUnlabeled, prototypes, metrics, fine-tuning).

Not implemented yet (tracked as the "scan-serve" issue); nothing in this package is usable.
"""
