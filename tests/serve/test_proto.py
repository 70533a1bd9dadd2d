"""The committed stubs are what grpcio-tools makes of protos/scan/v1/scan.proto today."""

from scan_serve.proto.generate import OUTPUTS, generate, HERE


def test_committed_stubs_match_the_proto(tmp_path):
    generate(tmp_path)
    stale = [name for name in OUTPUTS if (tmp_path / name).read_text() != (HERE / name).read_text()]
    assert not stale, f"{stale} differ from protos/scan/v1/scan.proto: run python -m scan_serve.proto.generate"


def test_the_contract_is_a_versioned_package():
    from scan_serve.proto import scan_pb2

    assert scan_pb2.DESCRIPTOR.package == "scan.v1"
    service = scan_pb2.DESCRIPTOR.services_by_name["ScanService"]
    assert service.full_name == "scan.v1.ScanService"
