import pytest
from tritonclient.grpc import model_config_pb2 as pb

from export.errors import ExportError, RepositoryError
from export.triton_config import TritonModelConfig, parse_config, signature


def config(**changes):
    values = dict(name="fmnist", channels=1, image_size=28, num_clusters=10, embedding_dim=64)
    values.update(changes)
    return TritonModelConfig(**values)


def test_config_pbtxt_parses_back_into_tritons_model_config_with_every_field():
    text = config(max_batch_size=32, instance_kind="gpu", instance_count=2, preferred_batch_sizes=(8, 32),
                  max_queue_delay_us=250, keep_versions=2).to_text()
    parsed = parse_config(text)
    assert isinstance(parsed, pb.ModelConfig)
    assert parsed.name == "fmnist" and parsed.platform == "onnxruntime_onnx"
    assert parsed.max_batch_size == 32 and parsed.default_model_filename == "model.onnx"
    (images,) = parsed.input
    assert (images.name, images.data_type, list(images.dims)) == ("images", pb.TYPE_UINT8, [1, 28, 28])
    assert images.format == pb.ModelInput.FORMAT_NCHW
    assert [(o.name, o.data_type, list(o.dims)) for o in parsed.output] == [
        ("probs", pb.TYPE_FP32, [10]), ("embedding", pb.TYPE_FP32, [64])]
    assert list(parsed.dynamic_batching.preferred_batch_size) == [8, 32]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 250
    (group,) = parsed.instance_group
    assert (group.kind, group.count) == (pb.ModelInstanceGroup.KIND_GPU, 2)
    assert parsed.version_policy.WhichOneof("policy_choice") == "latest"
    assert parsed.version_policy.latest.num_versions == 2
    assert signature(parsed) == {"images": [1, 28, 28], "probs": [10], "embedding": [64]}


@pytest.mark.parametrize("kind,expected", [("cpu", pb.ModelInstanceGroup.KIND_CPU),
                                           ("auto", pb.ModelInstanceGroup.KIND_AUTO)])
def test_instance_kind_is_selectable(kind, expected):
    assert parse_config(config(instance_kind=kind).to_text()).instance_group[0].kind == expected


@pytest.mark.parametrize("changes,message", [
    ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
    ({"instance_kind": "tpu"}, "instance kind must be one of"),
    ({"instance_count": 0}, "instance count must be at least 1"),
    ({"keep_versions": 0}, "keep_versions must be at least 1"),
    ({"preferred_batch_sizes": (8, 128)}, r"preferred batch sizes \[128\] are outside 1..max_batch_size=64"),
])
def test_bad_settings_are_refused_with_the_reason(changes, message):
    with pytest.raises(ExportError, match=message):
        config(**changes)


def test_a_field_outside_tritons_schema_does_not_parse():
    with pytest.raises(RepositoryError, match="not a valid Triton model configuration"):
        parse_config(config().to_text() + '\nmax_batch_sise: 4\n')
