"""ClassifyUnlabeled, model info and prototypes against a real server, checked against the model run directly."""


import grpc
import numpy as np
import pytest

from export.session import onnx_session, run_session
from export.prototypes import PrototypeIndex
from export.repository import ModelRepository
from scan_serve.proto import scan_pb2
from tests.fmnist import needs_fashion_mnist
from tests.serve.conftest import TOKEN, png


@pytest.fixture(scope="module")
def test_images(fashion_test):
    images, labels = fashion_test
    return images[:200, None], labels[:200]


@needs_fashion_mnist
def test_real_images_as_png_and_raw_get_what_the_onnx_model_says(stub, repository, test_images):
    images, _ = test_images
    version = ModelRepository(repository).load("fashion_mnist")
    probs, embedding = run_session(onnx_session(version.onnx_path), images)
    index = PrototypeIndex.load(version.path)
    threshold = version.metadata["confidence_threshold"]

    request = scan_pb2.ClassifyRequest(top_k_prototypes=3, include_probabilities=True)
    for i, image in enumerate(images[:100]):
        request.images.add(id=f"png-{i}", encoded=png(image[0]))
    for i, image in enumerate(images[100:]):
        request.images.add(id=f"raw-{i}", raw=scan_pb2.RawImage(data=image.tobytes(), channels=1, height=28, width=28))
    response = stub.ClassifyUnlabeled(request)

    assert (response.model_name, response.model_version) == ("fashion_mnist", 1)
    assert [r.id for r in response.results] == [f"png-{i}" for i in range(100)] + [f"raw-{i}" for i in range(100)]
    sims, rows = index.search(embedding, 3)
    for i, result in enumerate(response.results):
        assert result.cluster == probs[i].argmax()
        assert result.confidence == pytest.approx(probs[i].max(), abs=1e-6)
        assert result.confident == (probs[i].max() >= threshold)
        np.testing.assert_allclose(result.probabilities, probs[i], atol=1e-6)
        assert [p.prototype_id for p in result.nearest_prototypes] == index.image_id[rows[i]].tolist()
        np.testing.assert_allclose([p.similarity for p in result.nearest_prototypes], sims[i], atol=1e-5)
        assert result.nearest_prototypes[0].source.startswith("fashion_mnist[")
    assert any(r.confident for r in response.results) and not all(r.confident for r in response.results)


@needs_fashion_mnist
def test_defaults_leave_out_probabilities_and_prototypes(stub, test_images):
    images, _ = test_images
    response = stub.ClassifyUnlabeled(scan_pb2.ClassifyRequest(images=[scan_pb2.Image(encoded=png(images[0, 0]))]))
    (result,) = response.results
    assert list(result.probabilities) == [] and list(result.nearest_prototypes) == [] and result.id == ""


@needs_fashion_mnist
def test_served_clusters_agree_with_classes_as_well_as_training_said(stub, test_images, repository):
    """Fashion-MNIST labels (evaluation only): the served answers score like the exported model did."""
    from trainer.evaluate import cluster_metrics

    images, labels = test_images
    request = scan_pb2.ClassifyRequest(images=[scan_pb2.Image(encoded=png(i[0])) for i in images[:64]])
    request2 = scan_pb2.ClassifyRequest(images=[scan_pb2.Image(encoded=png(i[0])) for i in images[64:128]])
    clusters = [r.cluster for r in stub.ClassifyUnlabeled(request).results]
    clusters += [r.cluster for r in stub.ClassifyUnlabeled(request2).results]
    acc = cluster_metrics(np.array(clusters), labels[:128], 10, 10)["acc"]
    assert acc > 0.6  # 0.731 on the whole test split; far above chance (0.1) on these 128


def test_model_info_describes_the_served_version(stub, repository):
    info = stub.GetModelInfo(scan_pb2.GetModelInfoRequest())
    meta = ModelRepository(repository).load("fashion_mnist").metadata
    assert (info.model_name, info.model_version, info.num_clusters) == ("fashion_mnist", 1, 10)
    assert (info.input_channels, info.input_height, info.input_width) == (1, 28, 28)
    assert info.confidence_threshold == pytest.approx(meta["confidence_threshold"])
    assert info.embedding_dim == 64 and info.backend == "onnxruntime" and info.prototypes_per_cluster == 8
    assert len(info.cluster_names) == 10


def test_prototypes_of_a_cluster_are_the_versions_most_central_first(stub, repository):
    index = PrototypeIndex.load(ModelRepository(repository).load("fashion_mnist").path)
    response = stub.GetPrototypes(scan_pb2.GetPrototypesRequest(cluster=4))
    assert response.cluster == 4 and response.model_version == 1
    assert [p.prototype_id for p in response.prototypes] == [p["image_id"] for p in index.of_cluster(4)]
    assert [p.rank for p in response.prototypes] == list(range(8))
    with pytest.raises(grpc.RpcError) as error:
        stub.GetPrototypes(scan_pb2.GetPrototypesRequest(cluster=10))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cluster 10 does not exist; the model has clusters 0..9" in error.value.details()


def test_cluster_names_need_the_operator_token_and_then_show_everywhere(stub, repository):
    request = scan_pb2.SetClusterNamesRequest(names={3: "dresses", 7: "sneakers"})
    with pytest.raises(grpc.RpcError) as error:
        stub.SetClusterNames(request)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED and "operator token" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        stub.SetClusterNames(request, metadata=[("authorization", "Bearer not-the-token")])
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as error:
        stub.SetClusterNames(request, metadata=[("authorization", TOKEN)])  # no "Bearer "
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stub.GetModelInfo(scan_pb2.GetModelInfoRequest()).cluster_names[3] == ""

    info = stub.SetClusterNames(request, metadata=[("authorization", f"Bearer {TOKEN}")])
    assert info.cluster_names[3] == "dresses" and info.cluster_names[7] == "sneakers"
    assert stub.GetPrototypes(scan_pb2.GetPrototypesRequest(cluster=7)).cluster_name == "sneakers"
    raw = scan_pb2.RawImage(data=bytes(784), channels=1, height=28, width=28)
    result = stub.ClassifyUnlabeled(scan_pb2.ClassifyRequest(images=[scan_pb2.Image(raw=raw)])).results[0]
    assert result.cluster_name == {3: "dresses", 7: "sneakers"}.get(result.cluster, "")
    assert '"3": "dresses"' in (repository / "fashion_mnist" / "cluster_names.json").read_text()

    with pytest.raises(grpc.RpcError) as error:
        stub.SetClusterNames(scan_pb2.SetClusterNamesRequest(names={12: "x"}),
                             metadata=[("authorization", f"Bearer {TOKEN}")])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "clusters [12] do not exist" in error.value.details()
    info = stub.SetClusterNames(scan_pb2.SetClusterNamesRequest(names={3: ""}),
                                metadata=[("authorization", f"Bearer {TOKEN}")])
    assert info.cluster_names[3] == "" and info.cluster_names[7] == "sneakers"
