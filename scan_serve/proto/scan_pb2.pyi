from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_REJECTED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_REJECTED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class Image(_message.Message):
    __slots__ = ("id", "encoded", "raw")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    id: str
    encoded: bytes
    raw: RawImage
    def __init__(self, id: _Optional[str] = ..., encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("data", "channels", "height", "width")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    channels: int
    height: int
    width: int
    def __init__(self, data: _Optional[bytes] = ..., channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("images", "top_k_prototypes", "include_probabilities")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    top_k_prototypes: int
    include_probabilities: bool
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., top_k_prototypes: _Optional[int] = ..., include_probabilities: _Optional[bool] = ...) -> None: ...

class Prototype(_message.Message):
    __slots__ = ("cluster", "prototype_id", "similarity", "source", "rank")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    PROTOTYPE_ID_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    cluster: int
    prototype_id: int
    similarity: float
    source: str
    rank: int
    def __init__(self, cluster: _Optional[int] = ..., prototype_id: _Optional[int] = ..., similarity: _Optional[float] = ..., source: _Optional[str] = ..., rank: _Optional[int] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("id", "cluster", "confidence", "confident", "probabilities", "cluster_name", "nearest_prototypes")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENT_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    NEAREST_PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    id: str
    cluster: int
    confidence: float
    confident: bool
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    cluster_name: str
    nearest_prototypes: _containers.RepeatedCompositeFieldContainer[Prototype]
    def __init__(self, id: _Optional[str] = ..., cluster: _Optional[int] = ..., confidence: _Optional[float] = ..., confident: _Optional[bool] = ..., probabilities: _Optional[_Iterable[float]] = ..., cluster_name: _Optional[str] = ..., nearest_prototypes: _Optional[_Iterable[_Union[Prototype, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "results")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    results: _containers.RepeatedCompositeFieldContainer[Classification]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., results: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_name", "model_version", "num_clusters", "input_channels", "input_height", "input_width", "confidence_threshold", "cluster_names", "embedding_dim", "backend", "prototypes_per_cluster")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    INPUT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_NAMES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PROTOTYPES_PER_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    num_clusters: int
    input_channels: int
    input_height: int
    input_width: int
    confidence_threshold: float
    cluster_names: _containers.RepeatedScalarFieldContainer[str]
    embedding_dim: int
    backend: str
    prototypes_per_cluster: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., num_clusters: _Optional[int] = ..., input_channels: _Optional[int] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., confidence_threshold: _Optional[float] = ..., cluster_names: _Optional[_Iterable[str]] = ..., embedding_dim: _Optional[int] = ..., backend: _Optional[str] = ..., prototypes_per_cluster: _Optional[int] = ...) -> None: ...

class GetPrototypesRequest(_message.Message):
    __slots__ = ("cluster",)
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    cluster: int
    def __init__(self, cluster: _Optional[int] = ...) -> None: ...

class GetPrototypesResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "cluster", "cluster_name", "prototypes")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    cluster: int
    cluster_name: str
    prototypes: _containers.RepeatedCompositeFieldContainer[Prototype]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., cluster: _Optional[int] = ..., cluster_name: _Optional[str] = ..., prototypes: _Optional[_Iterable[_Union[Prototype, _Mapping]]] = ...) -> None: ...

class SetClusterNamesRequest(_message.Message):
    __slots__ = ("names",)
    class NamesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.ScalarMap[int, str]
    def __init__(self, names: _Optional[_Mapping[int, str]] = ...) -> None: ...

class SubmitImagesRequest(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class SubmitImagesResponse(_message.Message):
    __slots__ = ("received", "stored", "duplicates", "stored_total")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    STORED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    received: int
    stored: int
    duplicates: int
    stored_total: int
    def __init__(self, received: _Optional[int] = ..., stored: _Optional[int] = ..., duplicates: _Optional[int] = ..., stored_total: _Optional[int] = ...) -> None: ...

class StartFineTuneRequest(_message.Message):
    __slots__ = ("epochs", "threshold", "max_images", "learning_rate", "min_agreement", "augment", "no_class_balance")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MIN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    NO_CLASS_BALANCE_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    threshold: float
    max_images: int
    learning_rate: float
    min_agreement: float
    augment: str
    no_class_balance: bool
    def __init__(self, epochs: _Optional[int] = ..., threshold: _Optional[float] = ..., max_images: _Optional[int] = ..., learning_rate: _Optional[float] = ..., min_agreement: _Optional[float] = ..., augment: _Optional[str] = ..., no_class_balance: _Optional[bool] = ...) -> None: ...

class FineTuneJob(_message.Message):
    __slots__ = ("id", "state", "progress", "message", "base_version", "new_version", "created_at", "started_at", "finished_at", "images", "gate_failures", "gate_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    GATE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    GATE_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: JobState
    progress: float
    message: str
    base_version: int
    new_version: int
    created_at: float
    started_at: float
    finished_at: float
    images: int
    gate_failures: _containers.RepeatedScalarFieldContainer[str]
    gate_json: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[float] = ..., message: _Optional[str] = ..., base_version: _Optional[int] = ..., new_version: _Optional[int] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., images: _Optional[int] = ..., gate_failures: _Optional[_Iterable[str]] = ..., gate_json: _Optional[str] = ...) -> None: ...

class GetFineTuneJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListFineTuneJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListFineTuneJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[FineTuneJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[FineTuneJob, _Mapping]]] = ...) -> None: ...

class CancelFineTuneJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
