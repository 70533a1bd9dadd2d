"""Generated gRPC stubs of protos/scan/v1/scan.proto (do not edit; see generate.py)."""
