"""The gateway's preprocessing is the training preprocessing, and every input rule answers the right status."""

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from scan_serve.errors import InvalidInput, OverLimit
from scan_serve.inputs import InputLimits, prepare_image, prepare_images
from scan_serve.proto import scan_pb2
from tests.fmnist import needs_fashion_mnist
from tests.serve.bad_inputs import jpeg_of_scans, png_bomb, rle_bmp
from tests.serve.conftest import start
from trainer.data.folder import load_image_folder


def encode(array, fmt="PNG", **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fashion(fashion_test):
    return fashion_test[0][:12, None]  # (12, 1, 28, 28)


@needs_fashion_mnist
def test_gateway_preprocessing_equals_the_training_folder_reader_on_the_same_files(tmp_path, fashion):
    files = {}
    for i, image in enumerate(fashion):
        gray = np.array(Image.fromarray(image[0]).resize((40 + 4 * i, 56), Image.Resampling.BILINEAR))
        if i % 3 == 0:
            files[f"{i:02d}.png"] = encode(gray)
        elif i % 3 == 1:
            files[f"{i:02d}.jpg"] = encode(np.stack([gray, gray // 2, 255 - gray], -1), "JPEG", quality=90)
        else:
            files[f"{i:02d}.png"] = encode(np.stack([gray, gray, gray, np.full_like(gray, 128)], -1))  # RGBA
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    training = load_image_folder(tmp_path, image_size=28, channels=1, in_memory=True)
    for i in range(len(training)):
        source = training.source(i)
        served = prepare_image(scan_pb2.Image(encoded=files[source]), i, 1, 28, InputLimits())
        np.testing.assert_array_equal(served, training[i].numpy(), err_msg=source)


@needs_fashion_mnist
def test_raw_pixels_are_preprocessed_like_the_same_pixels_encoded(fashion):
    limits = InputLimits()
    image = fashion[3, 0]
    raw = scan_pb2.Image(raw=scan_pb2.RawImage(data=image.tobytes(), channels=1, height=28, width=28))
    np.testing.assert_array_equal(prepare_image(raw, 0, 1, 28, limits), fashion[3])  # as stored in the data set
    rgb = np.stack([image, 255 - image, image // 3]).repeat(2, axis=1)  # (3, 56, 28)
    raw = scan_pb2.Image(raw=scan_pb2.RawImage(data=rgb.tobytes(), channels=3, height=56, width=28))
    encoded = scan_pb2.Image(encoded=encode(np.ascontiguousarray(rgb.transpose(1, 2, 0))))
    np.testing.assert_array_equal(prepare_image(raw, 0, 1, 28, limits), prepare_image(encoded, 0, 1, 28, limits))


def raw_image(data=bytes(784), channels=1, height=28, width=28, image_id=""):
    return scan_pb2.Image(id=image_id, raw=scan_pb2.RawImage(data=data, channels=channels, height=height, width=width))


GOOD = encode((np.arange(784) % 256).astype(np.uint8).reshape(28, 28))
CASES = [
    ("truncated PNG", [scan_pb2.Image(id="t", encoded=GOOD[: len(GOOD) // 2])], {},
     grpc.StatusCode.INVALID_ARGUMENT, "image 0 (id 't'): corrupt or truncated PNG"),
    ("zero bytes", [scan_pb2.Image(id="z", encoded=b"")], {}, grpc.StatusCode.INVALID_ARGUMENT,
     "image 0 (id 'z'): empty image data (0 bytes)"),
    ("no content", [scan_pb2.Image(id="m")], {}, grpc.StatusCode.INVALID_ARGUMENT,
     "image 0 (id 'm'): has neither encoded bytes nor raw pixels"),
    ("wrong magic", [scan_pb2.Image(encoded=b"GIF87a-not-really" + bytes(64))], {}, grpc.StatusCode.INVALID_ARGUMENT,
     "image 0: "),
    ("text", [scan_pb2.Image(encoded=b"hello, world")], {}, grpc.StatusCode.INVALID_ARGUMENT, "not a recognised image"),
    ("1x1", [scan_pb2.Image(id="tiny", encoded=encode(np.zeros((1, 1), np.uint8)))], {},
     grpc.StatusCode.INVALID_ARGUMENT, "image 0 (id 'tiny'): image is 1x1 pixels, smaller than the minimum side of 8"),
    ("20000x20000 PNG bomb", [scan_pb2.Image(id="bomb", encoded=png_bomb(20000))], {},
     grpc.StatusCode.RESOURCE_EXHAUSTED, "image 0 (id 'bomb'): image too large (decompression bomb check): "
                                        "Image size (400000000 pixels)"),
    ("5000x5000 over the pixel limit", [scan_pb2.Image(id="big", encoded=png_bomb(5000))], {},
     grpc.StatusCode.RESOURCE_EXHAUSTED, "image 0 (id 'big'): image is 5000x5000 = 25000000 pixels, more than the "
                                        "limit of 4194304 pixels"),
    ("JPEG of 200 scans", [scan_pb2.Image(id="scans", encoded=jpeg_of_scans(194))], {},
     grpc.StatusCode.RESOURCE_EXHAUSTED, "image 0 (id 'scans'): a JPEG of 200 scans, more than the limit of 100"),
    ("RLE BMP of 2097152x8", [scan_pb2.Image(id="rle", encoded=rle_bmp(2097152, 8))], {},
     grpc.StatusCode.RESOURCE_EXHAUSTED, "image 0 (id 'rle'): an RLE-compressed BMP of 2097152x8 pixels, more than "
                                         "the limit of 1048576 for RLE (send PNG)"),
    ("raw size mismatch", [raw_image(data=bytes(700))], {}, grpc.StatusCode.INVALID_ARGUMENT,
     "raw data has 700 bytes, but channels x height x width = 1x28x28 = 784"),
    ("raw 2 channels", [raw_image(data=bytes(2 * 784), channels=2)], {}, grpc.StatusCode.INVALID_ARGUMENT,
     "raw channels must be 1 or 3, got 2"),
    ("raw 0x0", [raw_image(data=b"", height=0, width=0)], {}, grpc.StatusCode.INVALID_ARGUMENT,
     "smaller than the minimum side"),
    ("raw huge declared", [raw_image(data=bytes(10), height=100000, width=100000)], {},
     grpc.StatusCode.RESOURCE_EXHAUSTED, "raw image is 100000x100000 = 10000000000 pixels"),
    ("too many images", [raw_image()] * 257, {}, grpc.StatusCode.RESOURCE_EXHAUSTED,
     "the request has 257 images, more than the limit of 256 per request"),
    ("no images", [], {}, grpc.StatusCode.INVALID_ARGUMENT, "the request has no images"),
    ("too many bytes", [scan_pb2.Image(encoded=GOOD + bytes(1 << 20))], {}, grpc.StatusCode.RESOURCE_EXHAUSTED,
     "more than the limit of 1048576 bytes per image"),
    ("top_k", [raw_image()], {"top_k_prototypes": 65}, grpc.StatusCode.INVALID_ARGUMENT,
     "top_k_prototypes is 65, more than the limit of 64"),
    ("long id", [raw_image(image_id="x" * 257)], {}, grpc.StatusCode.INVALID_ARGUMENT,
     "image 0: the id is longer than 256 bytes"),
    ("bad among good", [raw_image(image_id="ok"), scan_pb2.Image(id="ok2", encoded=GOOD),
                        scan_pb2.Image(id="broken", encoded=GOOD[:40])], {},
     grpc.StatusCode.INVALID_ARGUMENT, "image 2 (id 'broken'): "),
]


@pytest.mark.parametrize("images,options,code,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_bad_input_gets_its_status_and_the_server_answers_the_next_request(stub, images, options, code, message):
    with pytest.raises(grpc.RpcError) as error:
        stub.ClassifyUnlabeled(scan_pb2.ClassifyRequest(images=images, **options))
    assert error.value.code() == code
    assert message in error.value.details()
    good = stub.ClassifyUnlabeled(scan_pb2.ClassifyRequest(images=[scan_pb2.Image(id="good", encoded=GOOD)]))
    assert good.results[0].id == "good" and good.model_version == 1


def test_a_message_over_the_size_limit_is_refused_by_grpc_itself(repository):
    running = start(repository, metrics_port=None, limits=InputLimits(max_message_bytes=1 << 20))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            from scan_serve.proto import scan_pb2_grpc

            stub = scan_pb2_grpc.ScanServiceStub(channel)
            images = [raw_image(data=bytes(784 * 4), height=56, width=56)] * 400  # about 1.25 MB
            with pytest.raises(grpc.RpcError) as error:
                stub.ClassifyUnlabeled(scan_pb2.ClassifyRequest(images=images))
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.ClassifyUnlabeled(scan_pb2.ClassifyRequest(images=[raw_image()])).model_version == 1
    finally:
        running.stop(1)


def test_a_batch_of_model_sized_raw_images_is_taken_whole_and_equals_the_per_image_path():
    rng = np.random.default_rng(5)
    limits = InputLimits()
    images = [raw_image(rng.integers(0, 256, 784, dtype=np.uint8).tobytes(), image_id=f"é{i}") for i in range(9)]
    whole = prepare_images(images, 1, 28, limits)
    assert whole.flags.writeable
    np.testing.assert_array_equal(whole, np.stack([prepare_image(im, i, 1, 28, limits) for i, im in enumerate(images)]))
    mixed = [*images[:3], scan_pb2.Image(encoded=GOOD)]  # not all raw: the per-image path
    np.testing.assert_array_equal(prepare_images(mixed, 1, 28, limits)[:3], whole[:3])
    with pytest.raises(InvalidInput, match="image 1: the id is longer than 256 bytes"):  # rules still apply
        prepare_images([images[0], raw_image(bytes(784), image_id="é" * 200)], 1, 28, limits)


def test_ordinary_progressive_jpegs_and_small_rle_bmps_are_decoded():
    limits = InputLimits()
    for data in (jpeg_of_scans(0), jpeg_of_scans(90), rle_bmp(512, 512)):
        image = scan_pb2.Image(encoded=data)
        assert prepare_image(image, 0, 1, 28, limits).shape == (1, 28, 28)


def test_a_gzip_compressed_request_is_refused_before_it_is_inflated(repository):
    running = start(repository, metrics_port=None)
    try:
        request = scan_pb2.ClassifyRequest(images=[raw_image()])
        from scan_serve.proto import scan_pb2_grpc  # noqa: PLC0415
        with grpc.insecure_channel(f"127.0.0.1:{running.port}", compression=grpc.Compression.Gzip) as channel:
            with pytest.raises(grpc.RpcError) as error:
                scan_pb2_grpc.ScanServiceStub(channel).ClassifyUnlabeled(request)
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED and "gzip" in error.value.details()
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            assert scan_pb2_grpc.ScanServiceStub(channel).ClassifyUnlabeled(request).model_version == 1
    finally:
        running.stop(1)


@pytest.mark.parametrize("limit", ["max_images", "max_image_bytes", "max_pixels", "min_side"])
def test_limits_must_be_positive(limit):
    with pytest.raises(ValueError, match=f"{limit} must be at least 1"):
        InputLimits(**{limit: 0})


def test_errors_are_typed_for_callers_of_the_library():
    with pytest.raises(OverLimit):
        prepare_image(raw_image(data=bytes(10), height=100000, width=100000), 0, 1, 28, InputLimits())
    with pytest.raises(InvalidInput):
        prepare_image(scan_pb2.Image(encoded=b"\x00"), 0, 1, 28, InputLimits())
