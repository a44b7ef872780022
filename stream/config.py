"""The deployment config: one YAML file describes cameras, model, windows, events, sinks and metrics.

Models reject unknown keys and carry a description on every field. Loading keeps the YAML node
marks, so every problem is reported with its path *and* line (``events.treshold (line 14): unknown
key``). ``${VAR}`` and ``${VAR:-default}`` are substituted from the environment inside string values,
so passwords and tokens never need to live in the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from engine.bundle import DEFAULT_MAX_WINDOW
from engine.errors import DsanetError
from engine.live_window import DEFAULT_LOOKAHEAD, DEFAULT_WINDOW
from stream.redact import redact, register_secret, url_password_candidates

URL_SCHEMES = ("rtsp", "rtsps", "http", "https", "file")
from engine.demo_paths import DEMO_CONFIG, DEMO_DIR, use_demo_defaults  # noqa: E402,F401  (moved there)


class ConfigError(DsanetError):
    """A deployment config is invalid; ``problems`` holds one line per problem with path and line."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s) in the config:\n" + "\n".join(f"  - {p}" for p in problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------- parts


class IngestConfig(_Model):
    """How readers open streams and recover from trouble."""

    open_timeout: float = Field(10.0, gt=0, description="Seconds allowed to open a stream before giving up on this try.")
    read_timeout: float = Field(5.0, gt=0, description="Seconds without a packet after which a live stream counts as stalled.")
    backoff_initial: float = Field(1.0, gt=0, description="First reconnect delay in seconds; doubles on each failure.")
    backoff_max: float = Field(30.0, gt=0, description="Upper bound of the reconnect delay in seconds.")
    backoff_reset_after: float = Field(60.0, gt=0, description="Seconds of healthy streaming after which the delay resets.")
    jitter: float = Field(0.2, ge=0, le=1, description="Random +/- fraction applied to each reconnect delay.")
    hwaccel: Literal["none", "auto", "cuda", "vaapi", "qsv", "videotoolbox", "d3d11va"] = Field("none", description=(
        "Video decode device: 'none' decodes in software; a named FFmpeg device type must work here (probed "
        "at start, else the service refuses to start); 'auto' takes the first that works, else software."))
    hwaccel_device: str | None = Field(None, description=(
        "Device for ingest.hwaccel, e.g. '/dev/dri/renderD128' (VAAPI) or '1' (CUDA GPU index); default device if unset."))

    @model_validator(mode="after")
    def _bounds(self) -> IngestConfig:
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be >= backoff_initial")
        return self


class WindowConfig(_Model):
    """The sliding window of snippet embeddings scored by the head."""

    length: int = Field(DEFAULT_WINDOW, ge=1, le=DEFAULT_MAX_WINDOW, description=f"Snippets in the window (at most the bundle's maximum, {DEFAULT_MAX_WINDOW}).")
    lookahead: int = Field(DEFAULT_LOOKAHEAD, ge=0, le=64, description=(
        "Snippets behind the newest at which a score is reported: the head is not causal, so a lookahead "
        "trades latency (lookahead x snippet duration) for agreement with offline scoring."))

    @model_validator(mode="after")
    def _lookahead_fits(self) -> WindowConfig:
        if self.lookahead >= self.length:
            raise ValueError(f"lookahead ({self.lookahead}) must be smaller than length ({self.length})")
        return self


class EventsConfig(_Model):
    """When an anomaly becomes an alert event, and when it ends.

    The one declaration of the event settings: per-camera overrides (:data:`EventsOverride`), the event
    machine's ``stream.events.EventSettings`` and ``dsanet score``'s options are derived from these fields.
    """

    on_threshold: float = Field(0.6, ge=0, le=1, description="Score at or above which an event may start.")
    off_threshold: float = Field(0.4, ge=0, le=1, description="Score below which an open event may end (hysteresis).")
    min_duration: float = Field(1.0, ge=0, allow_inf_nan=False, description="Seconds the score must stay >= on_threshold before a start.")
    hold: float = Field(3.0, ge=0, allow_inf_nan=False, description="Seconds the score must stay < off_threshold before an end.")
    cooldown: float = Field(10.0, ge=0, allow_inf_nan=False, description="Seconds after an end during which the same category cannot start again.")
    update_interval: float = Field(5.0, ge=0, allow_inf_nan=False, description="Minimum seconds between two update events of one event.")

    @model_validator(mode="after")
    def _hysteresis(self) -> EventsConfig:
        if self.off_threshold > self.on_threshold:
            raise ValueError(f"off_threshold ({self.off_threshold}) must be <= on_threshold ({self.on_threshold})")
        return self

    def derive(self, update: Mapping[str, Any], where: str = "events") -> EventsConfig:
        """These settings with ``update`` applied, validated; ``ValueError`` with one line naming ``where``."""
        if not update:
            return self
        try:
            return type(self).model_validate({**self.model_dump(), **update})
        except ValidationError as exc:
            raise ValueError(f"{where}: " + "; ".join(_describe_short(e) for e in exc.errors())) from None


def _describe_short(err: Any) -> str:
    loc = ".".join(str(x) for x in err.get("loc", ()))
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def _overrides_of(model: type[BaseModel], name: str, doc: str) -> type[BaseModel]:
    """A model with every field of ``model`` optional (``None`` = keep the global value), same bounds."""
    fields: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        copy = FieldInfo.merge_field_infos(info, default=None)
        fields[key] = (info.annotation | None, copy)  # type: ignore[operator]
    return create_model(name, __base__=_Model, __doc__=doc, **fields)


class WindowOverride(_Model):
    """Per-camera override of the window section; unset fields keep the global value."""

    length: int | None = Field(None, ge=1, le=DEFAULT_MAX_WINDOW, description="Snippets in this camera's window.")
    lookahead: int | None = Field(None, ge=0, le=64, description="This camera's lookahead in snippets.")


class ScoringConfig(_Model):
    """How often the head scores a camera's window (adaptive head stride, docs/shortcuts.md)."""

    adaptive_stride: int = Field(1, ge=1, le=16, description=(
        "Largest head stride k: while a camera is calm, its window is scored every k-th snippet and the k "
        "rows it now covers are read out (each snippet still gets exactly one score, up to (k-1) snippets "
        "later). 1 = score every snippet (off)."))
    stride_margin: float = Field(0.2, ge=0, le=1, description=(
        "A camera counts as calm while no event is pending or open and every score of its last windows "
        "stays below on_threshold - stride_margin; otherwise it is scored every snippet."))


class StillGateConfig(_Model):
    """Still-scene gating of the encoder: reuse the last embedding while nothing in the picture moved."""

    enabled: bool = Field(False, description="Compare each snippet's frame with the camera's last embedded frame "
                          "and reuse that embedding when they match (off by default).")
    threshold: float = Field(4.0, gt=0, le=255, description=(
        "Largest change of any cell's mean luma (0-255 levels, 16x9 grid of cells) at which two frames count "
        "as the same scene."))
    max_reuse: int = Field(4, ge=1, le=1000, description="Most snippets in a row that may reuse one embedding; "
                           "the next is embedded fresh.")


if TYPE_CHECKING:
    ScoringOverride = ScoringConfig
    StillGateOverride = StillGateConfig
else:
    ScoringOverride = _overrides_of(
        ScoringConfig, "ScoringOverride",
        "Per-camera override of the scoring section; unset fields keep the global value.")
    StillGateOverride = _overrides_of(
        StillGateConfig, "StillGateOverride",
        "Per-camera override of the still_gate section; unset fields keep the global value.")


if TYPE_CHECKING:
    EventsOverride = EventsConfig
else:
    EventsOverride = _overrides_of(
        EventsConfig, "EventsOverride",
        "Per-camera override of the events section; unset fields keep the global value.")


class CalibrationConfig(_Model):
    """Per-camera thresholds learned from the camera's own scores (docs/calibration.md)."""

    enabled: bool = Field(False, description="Learn this camera's on/off thresholds from its own scores.")
    period: float = Field(86400.0, gt=0, allow_inf_nan=False, description="Seconds of scores a calibration learns from (the first one runs once this much is collected).")
    target_per_day: float = Field(2.0, ge=0, allow_inf_nan=False, description="Alert starts per day the learned thresholds may give on the calibration scores.")
    floor: float = Field(0.3, ge=0, le=1, description="The learned on_threshold is never below this.")
    directory: str = Field("calibration", description="Folder for the learned thresholds (one JSON file per camera; re-loaded at start).")
    max_samples: int = Field(200000, ge=16, le=2_000_000, description="Scores kept per camera (the newest; 8 bytes each).")


if TYPE_CHECKING:
    CalibrationOverride = CalibrationConfig
else:
    CalibrationOverride = _overrides_of(
        CalibrationConfig, "CalibrationOverride",
        "Per-camera override of the calibration section; unset fields keep the global value.")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$")


class CameraConfig(_Model):
    """One camera (or a file played as one)."""

    name: str = Field(description="Unique camera name: letters, digits, space, '_', '.', '-' (max 64); used in metrics and events.")
    url: str = Field(description="Stream URL: rtsp://, rtsps://, http(s):// or file:// (credentials may use ${ENV}).")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    enabled: bool = Field(True, description="Set false to keep a camera in the file without watching it.")
    loop: bool = Field(False, description="File sources: start again at the end (demos, replays).")
    realtime: bool = Field(True, description="File sources: pace frames at the file's frame rate, like a live camera.")
    window: WindowOverride | None = Field(None, description="Overrides of the global window section for this camera.")
    events: EventsOverride | None = Field(None, description="Overrides of the global events section for this camera.")
    calibration: CalibrationOverride | None = Field(None, description="Overrides of the global calibration section for this camera.")
    scoring: ScoringOverride | None = Field(None, description="Overrides of the global scoring section for this camera.")
    still_gate: StillGateOverride | None = Field(None, description="Overrides of the global still_gate section for this camera.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not _NAME.match(v) or ".." in v:
            raise ValueError(
                f"camera name {v!r} is not allowed: use letters, digits, space, '_', '.', '-' (no '/', no '..', max 64)")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in URL_SCHEMES:
            raise ValueError(f"URL {redact(v)!r} has scheme {parts.scheme!r}; expected one of {', '.join(URL_SCHEMES)}")
        if parts.scheme == "file":
            if not parts.path:
                raise ValueError(f"file URL {v!r} has no path (use file:///absolute/path.mp4 or file:relative.mp4)")
        elif not parts.hostname:
            raise ValueError(f"URL {redact(v)!r} has no host")
        return v


class TritonEncoderConfig(_Model):
    """The encoder served by an NVIDIA Triton server (``dsanet triton-repo`` writes its repository)."""

    runtime: Literal["triton"] = Field(description="Where the encoder runs: triton (the head stays in this worker).")
    url: str = Field("127.0.0.1:8001", description="host:port of Triton's gRPC endpoint.")
    model: str = Field("dsanet_encoder", description="Model name in the Triton repository.")
    model_version: str = Field("", description="Model version ('' = the server's policy, usually the latest).")
    timeout: float = Field(5.0, gt=0, description="Seconds per inference request before it counts as failed.")
    max_wait: float = Field(10.0, gt=0, description=(
        "Seconds one encoder batch keeps retrying while Triton is away; then it is dropped and counted "
        "(the encoder queue keeps the newest snippets meanwhile). Keep it under the 30 s liveness limit."))
    failure_threshold: int = Field(3, ge=1, description="Consecutive failures that open the circuit breaker.")
    backoff_initial: float = Field(0.1, gt=0, description="First retry delay in seconds; doubles per failure.")
    backoff_max: float = Field(2.0, gt=0, description="Largest retry / circuit probe delay in seconds.")
    connect_timeout: float = Field(60.0, gt=0, description="Seconds to wait at start for the model to be ready.")

    @field_validator("url")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]:]+:\d{1,5}", v):
            raise ValueError(f"url {v!r} must be host:port of Triton's gRPC endpoint (e.g. triton:8001), no scheme")
        return v

    def runner_options(self) -> dict[str, Any]:
        return self.model_dump(exclude={"runtime"})


if TYPE_CHECKING:
    from engine.categories import CategoryEdit


class CategoryAddConfig(_Model):
    """One category added in words (``model.categories.add``)."""

    name: str = Field(min_length=1, description="Category name shown in events; also its category_key.")
    prompts: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="One or more descriptions, averaged as a CLIP prompt ensemble.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from engine.categories import name_problem

        problem = name_problem(v)
        if problem:
            raise ValueError(f"the category name {v!r} {problem}")
        return v.strip()

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: list[str]) -> list[str]:
        blank = [i for i, p in enumerate(v) if not p.strip()]
        if blank:
            raise ValueError(f"prompt {blank[0]} ({v[blank[0]]!r}) is blank")
        return v


class CategoriesConfig(_Model):
    """Changes to the bundle's class list, applied at start without retraining (docs/categories.md)."""

    add: list[CategoryAddConfig] = Field(default_factory=list, description="Categories to add, in words.")
    rename: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict, description="Old name -> new display name; category_key stays the bundle's name.")
    drop: list[str] = Field(default_factory=list, description="Categories to remove (never the normal class).")

    @field_validator("rename")
    @classmethod
    def _rename(cls, v: dict[str, str]) -> dict[str, str]:
        from engine.categories import name_problem

        for old, new in v.items():
            problem = name_problem(new)
            if problem:
                raise ValueError(f"the new name for {old!r} {problem}")
        return v

    def to_edit(self, where: str = "model.categories") -> CategoryEdit:
        from engine.categories import AddedCategory, CategoryEdit

        return CategoryEdit(add=tuple(AddedCategory(a.name.strip(), tuple(a.prompts)) for a in self.add),
                            rename=dict(self.rename), drop=tuple(self.drop), where=where)


class ModelConfig(_Model):
    """The model bundle and the runtime it runs on."""

    bundle: str = Field(description="Path to the model bundle directory (encoder.onnx, head.onnx, bundle.json).")
    runtime: Literal["auto", "tensorrt", "onnxruntime", "torch"] = Field(
        "auto", description="Inference runtime; auto tries TensorRT, ONNX Runtime CUDA, torch CUDA, then ONNX Runtime CPU.")
    device: str = Field("cpu", description="cpu, cuda or cuda:N.")
    precision: Literal["fp32", "fp16", "bf16", "int8"] = Field(
        "fp32", description="Numeric precision; int8 uses the bundle's dynamically quantised encoder if present.")
    threads: int | None = Field(None, ge=1, description="Intra-op threads per model (None: runtime default).")
    encoder_batch: int = Field(16, ge=1, le=256, description="Maximum snippets the encoder embeds in one batch.")
    # 0: greedy batching. A busy worker's queue fills while it computes, so batches form under load anyway;
    # waiting to fill one only adds latency (ViT-B/16 on 2 cores, one camera: lag p95 0.57 s with 0.05/0.02,
    # 0.49 s with 0/0 at 1 thread, 0.28 s at 2 threads; docs/capacity.md)
    encoder_max_wait: float = Field(0.0, ge=0, description="Seconds the encoder waits to fill a batch.")
    head_batch: int = Field(16, ge=1, le=256, description="Maximum windows the head scores in one batch.")
    head_max_wait: float = Field(0.0, ge=0, description="Seconds the head waits to fill a batch.")
    head_int8: bool = Field(True, description=(
        "Run the bundle's INT8 head (head.int8.onnx, from dsanet export --head-int8, accuracy-gated) when it has "
        "one, on ONNX Runtime; false = always the fp32 head.onnx."))
    queue_size: int = Field(64, ge=1, description="Bound of each work queue; when full the oldest item is dropped and counted.")
    encoder: TritonEncoderConfig | None = Field(None, description=(
        "Run the encoder elsewhere: {runtime: triton, url, model}; unset = in this process on 'runtime'."))
    categories: CategoriesConfig | None = Field(
        None, description="Add, rename or drop categories in words (needs a bundle with text.onnx).")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", v):
            raise ValueError(f"device {v!r} is not cpu, cuda or cuda:N")
        return v


class SinkConfigBase(_Model):
    """What every sink config has; a sink registered by a plugin takes a subclass of its own."""

    type: str = Field(description="Sink type (the registry name).")
    name: str | None = Field(None, description="Name in metrics and logs (defaults to the type).")
    spool_max_events: int = Field(10000, ge=1, description="Events kept on disk for retry; when full the oldest is dropped and counted.")


class JsonlSinkConfig(SinkConfigBase):
    """Append one JSON line per event to a file."""

    type: Literal["jsonl"] = Field(description="Sink type.")
    path: str = Field(description="File to append events to.")
    fsync: bool = Field(True, description="fsync the file when an event ends.")


class StdoutSinkConfig(SinkConfigBase):
    """Print events to standard output."""

    type: Literal["stdout"] = Field(description="Sink type.")
    format: Literal["text", "json"] = Field("text", description="One readable line per event, or its JSON.")


class WebhookSinkConfig(SinkConfigBase):
    """POST every event as JSON."""

    type: Literal["webhook"] = Field(description="Sink type.")
    url: str = Field(description="http(s) URL that receives the POSTs.")
    timeout: float = Field(5.0, gt=0, description="Seconds per request.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers.")
    bearer_token: SecretStr | None = Field(None, description="Sent as 'Authorization: Bearer ...' (use ${ENV}).")
    hmac_secret: SecretStr | None = Field(None, description="Signs the body with HMAC-SHA256 in X-Dsanet-Signature (use ${ENV}).")
    backoff_initial: float = Field(1.0, gt=0, description="First retry delay in seconds.")
    backoff_max: float = Field(60.0, gt=0, description="Largest retry delay in seconds.")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL {redact(v)!r} must be http:// or https:// with a host")
        return v


class MqttSinkConfig(SinkConfigBase):
    """Publish events and live scores to an MQTT broker (Frigate-style topics)."""

    type: Literal["mqtt"] = Field(description="Sink type.")
    host: str = Field("127.0.0.1", description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    prefix: str = Field("dsanet", description="Topic prefix: <prefix>/events, <prefix>/<camera>/anomaly, <prefix>/available.")
    username: str | None = Field(None, description="Broker user name.")
    password: SecretStr | None = Field(None, description="Broker password (use ${ENV}).")
    client_id: str | None = Field(None, description="MQTT client id (default: dsanet-<hostname>).")
    tls: bool = Field(False, description="Connect with TLS.")
    keepalive: int = Field(30, ge=5, description="Keep-alive seconds.")
    publish_scores: bool = Field(True, description="Publish the current score per camera (QoS 0).")
    score_interval: float = Field(1.0, ge=0, description="Minimum seconds between two score messages of a camera.")
    home_assistant: bool = Field(False, description=(
        "Publish Home Assistant MQTT discovery: each camera appears as an anomaly binary sensor with "
        "score and category sensors."))
    discovery_prefix: str = Field("homeassistant", min_length=1, description="Home Assistant's discovery prefix.")
    commands: bool = Field(True, description=(
        "Take feedback marks from <prefix>/feedback/set (answered on <prefix>/feedback/result) while feedback is on."))


class KafkaSinkConfig(SinkConfigBase):
    """Produce events to a Kafka topic, keyed by camera (one partition per camera keeps its order)."""

    type: Literal["kafka"] = Field(description="Sink type.")
    brokers: str = Field(description="Bootstrap servers, host:port[,host:port...].")
    topic: str = Field("dsanet-events", pattern=r"^[A-Za-z0-9._\-]{1,249}$", description="Topic for events.")
    client_id: str | None = Field(None, description="Kafka client id (default: dsanet-<hostname>).")
    timeout: float = Field(10.0, gt=0, description="Seconds to wait for the broker's acknowledgement of an event.")
    backoff_initial: float = Field(1.0, gt=0, description="First retry delay in seconds.")
    backoff_max: float = Field(30.0, gt=0, description="Largest retry delay in seconds.")
    # Security settings come from the environment (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM,
    # KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SSL_CA_LOCATION, ...), never from this file.


SinkConfig = Annotated[
    JsonlSinkConfig | StdoutSinkConfig | WebhookSinkConfig | MqttSinkConfig | KafkaSinkConfig,
    Field(discriminator="type"),
]


class MetricsConfig(_Model):
    """Prometheus metrics and health endpoints."""

    enabled: bool = Field(True, description="Serve /metrics, /healthz and /readyz.")
    host: str = Field("127.0.0.1", description="Bind address; loopback unless you mean to expose it.")
    port: int = Field(9108, ge=0, le=65535, description="Port (0 picks a free one).")


class HttpConfig(_Model):
    """The one HTTP server of the service: /metrics, /healthz, /readyz, the API and the operator console.

    It listens where ``metrics.host``/``metrics.port`` say unless ``http.host``/``http.port`` are set
    (existing files keep working). Off loopback every request needs the token read from ``token_env``.
    """

    host: str | None = Field(None, description="Bind address (default: metrics.host, i.e. 127.0.0.1).")
    port: int | None = Field(None, ge=0, le=65535, description="Port (default: metrics.port; 0 picks a free one).")
    console: bool = Field(True, description="Serve the operator page and the JSON API under /api/v1.")
    token_env: str = Field("DSANET_HTTP_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description=(
        "Environment variable holding the access token (Bearer, or the Basic auth password); required "
        "when the server is bound to anything but loopback."))
    username: str = Field("dsanet", min_length=1, description="User name for Basic auth (the password is the token).")
    event_history: int = Field(500, ge=1, le=100000, description="Recent events the API keeps in memory.")


class EvidenceConfig(_Model):
    """Snapshots and clips saved per event."""

    enabled: bool = Field(False, description="Save a JPEG snapshot and an MP4 clip per event.")
    directory: str = Field("evidence", description="Folder for evidence files.")
    pre_roll: float = Field(5.0, ge=0, le=60, description="Seconds of video kept before an event's start.")
    post_roll: float = Field(5.0, ge=0, le=60, description="Seconds of video kept after an event's end.")
    max_age_days: float = Field(7.0, gt=0, description="Evidence older than this is deleted.")
    max_total_mb: float = Field(2048.0, gt=0, description="Oldest evidence is deleted beyond this total size.")


class SpoolConfig(_Model):
    """Where undelivered events wait."""

    directory: str = Field("spool", description="Folder for the per-sink on-disk spools.")


class FeedbackConfig(_Model):
    """Operator feedback and site data (``stream.feedback``, docs/feedback.md): what the model saw around
    each event, kept for marks, and a sample of calm windows, in the layout ``dsanet finetune`` reads."""

    enabled: bool = Field(True, description="Keep event embeddings for feedback marks and sample calm windows.")
    directory: str = Field("site-data", description="Site-data folder (list.csv, features/, examples.jsonl).")
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024, description=(
        "Disk bound of the whole folder; beyond it the oldest normal samples go first, then unmarked event "
        "captures, marks last."))
    context_snippets: int = Field(DEFAULT_WINDOW, ge=0, le=256, description=(
        "Snippets kept before and after each event (at least window.length - 1 - lookahead before it lets "
        "dsanet finetune check a held-out event in a full live window)."))
    ring_snippets: int = Field(512, ge=16, le=8192, description=(
        "Snippet embeddings each camera keeps in memory (the longest event that is kept whole, with context)."))
    pending_events: int = Field(200, ge=1, description="Ended events whose embeddings wait on disk for a mark.")
    normal_sample_interval: float = Field(900.0, ge=0, description=(
        "Seconds between two calm-window samples of a camera (0: no samples)."))
    normal_sample_snippets: int = Field(64, ge=1, le=8192, description=(
        "Snippets in one calm-window sample (all scored below off_threshold, no event open)."))
    normal_samples_per_camera: int = Field(100, ge=0, description="Calm samples kept per camera (oldest evicted).")
    queue_size: int = Field(64, ge=1, description="Bound of the writer's queue; when full the oldest is dropped and counted.")

    @model_validator(mode="after")
    def _fits(self) -> FeedbackConfig:
        if self.normal_sample_snippets > self.ring_snippets:
            raise ValueError(f"normal_sample_snippets ({self.normal_sample_snippets}) must be <= ring_snippets "
                             f"({self.ring_snippets})")
        return self


class ShardConfig(_Model):
    """This worker's share of the cameras when several workers run one config (``stream.shard``)."""

    index: int = Field(0, ge=0, description="This worker's index, 0..count-1 (--shard, SHARD_INDEX or a "
                                             "StatefulSet ordinal take precedence).")
    count: int = Field(1, ge=1, description="Number of workers sharing the cameras (rendezvous hashing).")

    @model_validator(mode="after")
    def _in_range(self) -> ShardConfig:
        if self.index >= self.count:
            raise ValueError(f"index ({self.index}) must be smaller than count ({self.count})")
        return self


class LoggingConfig(_Model):
    """Log output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["text", "json"] = Field("text", description="Human-readable lines or one JSON object per line.")


class DeploymentConfig(_Model):
    """A whole deployment."""

    cameras: list[CameraConfig] = Field(min_length=1, description="Cameras to watch.")
    model: ModelConfig = Field(description="Model bundle and runtime.")
    window: WindowConfig = Field(default_factory=WindowConfig, description="Sliding window of snippet embeddings.")
    events: EventsConfig = Field(default_factory=EventsConfig, description="Event thresholds and timing.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="Adaptive head stride.")
    still_gate: StillGateConfig = Field(default_factory=StillGateConfig, description="Still-scene gating of the encoder.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Stream opening, timeouts and reconnects.")
    sinks: list[SinkConfig] = Field(default_factory=list, description="Where alert events go; each chosen by type.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics and health endpoints.")
    http: HttpConfig = Field(default_factory=HttpConfig, description="HTTP server: metrics, health, API, console.")
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig, description="Per-event snapshots and clips.")
    spool: SpoolConfig = Field(default_factory=SpoolConfig, description="On-disk spool for undelivered events.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Log level and format.")
    shard: ShardConfig | None = Field(None, description="Cameras shared among workers: this worker's index/count.")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, description="Per-camera thresholds learned from each camera's scores.")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="Feedback marks and site data.")

    @model_validator(mode="after")
    def _unique(self) -> DeploymentConfig:
        first: dict[str, int] = {}
        for i, cam in enumerate(self.cameras):
            if cam.name.lower() in first:
                raise ValueError(f"cameras[{i}].name: duplicate camera name {cam.name!r} "
                                 f"(first used by cameras[{first[cam.name.lower()]}])")
            first[cam.name.lower()] = i
        names: set[str] = set()
        for i, sink in enumerate(self.sinks):
            n = sink.name or sink.type
            if n in names:
                raise ValueError(f"sinks[{i}].name: duplicate sink name {n!r} (give each sink of one type a name)")
            names.add(n)
        for i, cam in enumerate(self.cameras):
            w = self.window_for(cam)
            if w.lookahead >= w.length:
                raise ValueError(f"cameras[{i}].window: lookahead ({w.lookahead}) must be smaller than length ({w.length})")
            sc = self.scoring_for(cam)
            if w.lookahead + sc.adaptive_stride > w.length:
                key = f"cameras[{i}].scoring.adaptive_stride" if cam.scoring is not None and \
                    cam.scoring.adaptive_stride is not None else "scoring.adaptive_stride"
                raise ValueError(f"{key}: {sc.adaptive_stride} plus the window's lookahead ({w.lookahead}) must "
                                 f"be at most window.length ({w.length}) for camera {cam.name!r}")
            if cam.events is not None:  # the merged settings are validated here, once, at load
                self.events.derive(cam.events.model_dump(exclude_none=True), f"cameras[{i}].events")
        return self

    @model_validator(mode="after")
    def _one_server(self) -> DeploymentConfig:
        for key in ("host", "port"):
            h, m = getattr(self.http, key), getattr(self.metrics, key)
            if h is not None and "metrics" in self.model_fields_set and key in self.metrics.model_fields_set \
                    and h != m:
                raise ValueError(f"http.{key}: {h!r} differs from metrics.{key} {m!r}; one server serves both "
                                 f"now, so set only http.{key}")
        return self

    @property
    def http_host(self) -> str:
        """Where the one HTTP server listens (``http.host``, else ``metrics.host``)."""
        return self.http.host if self.http.host is not None else self.metrics.host

    @property
    def http_port(self) -> int:
        return self.http.port if self.http.port is not None else self.metrics.port

    def window_for(self, camera: CameraConfig) -> WindowConfig:
        """The global window section with this camera's overrides applied."""
        if camera.window is None:
            return self.window
        return self.window.model_copy(update=camera.window.model_dump(exclude_none=True))

    def events_for(self, camera: CameraConfig) -> EventsConfig:
        """The global events section with this camera's overrides applied."""
        if camera.events is None:
            return self.events
        return self.events.derive(camera.events.model_dump(exclude_none=True), f"camera {camera.name!r}: events")

    def calibration_for(self, camera: CameraConfig) -> CalibrationConfig:
        """The global calibration section with this camera's overrides applied."""
        if camera.calibration is None:
            return self.calibration
        return self.calibration.model_copy(update=camera.calibration.model_dump(exclude_none=True))

    def scoring_for(self, camera: CameraConfig) -> ScoringConfig:
        """The global scoring section with this camera's overrides applied."""
        if camera.scoring is None:
            return self.scoring
        return self.scoring.model_copy(update=camera.scoring.model_dump(exclude_none=True))

    def still_gate_for(self, camera: CameraConfig) -> StillGateConfig:
        """The global still_gate section with this camera's overrides applied."""
        if camera.still_gate is None:
            return self.still_gate
        return self.still_gate.model_copy(update=camera.still_gate.model_dump(exclude_none=True))

    def sink_name(self, index: int) -> str:
        s = self.sinks[index]
        return s.name or s.type

    @property
    def enabled_cameras(self) -> list[CameraConfig]:
        return [c for c in self.cameras if c.enabled]


# ------------------------------------------------------------------------------------- YAML loading

_ENV = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def _node_lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value
            out[(*path, k)] = key.start_mark.line + 1
            _node_lines(value, (*path, k), out)
            out[(*path, k)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, (*path, i), out)


def _substitute(value: Any, path: tuple[Any, ...], problems: list[tuple[tuple[Any, ...], str]]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, (*path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*path, i), problems) for i, v in enumerate(value)]
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            env = os.environ.get(m["name"])
            if env is not None:
                return env
            if m["default"] is not None:
                return m["default"]
            problems.append((path, f"environment variable {m['name']} is not set (used as ${{{m['name']}}})"))
            return ""
        return _ENV.sub(repl, value)
    return value


_SECRET_KEYS = frozenset({"password", "bearer_token", "hmac_secret", "token"})


def _register_secrets(value: Any, key: Any = None) -> None:
    """Register every configured credential with :func:`stream.redact.register_secret` (before
    validation, so even error messages about a bad entry mask it): passwords and secret query values of
    every URL, the secret fields, and webhook header values."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "headers" and isinstance(v, dict):
                for hv in v.values():
                    register_secret(hv)
            _register_secrets(v, k)
    elif isinstance(value, list):
        for v in value:
            _register_secrets(v, key)
    elif isinstance(value, str):
        if key in _SECRET_KEYS:
            register_secret(value)
        if "://" in value:
            for user, pw in url_password_candidates(value):
                register_secret(pw, user=user or None)


def _fmt_path(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _line_for(path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def _error_path(loc: tuple[Any, ...], raw: Any) -> tuple[Any, ...]:
    """Drop pydantic's union tags (e.g. 'jsonl') that are not keys of the YAML data."""
    out: list[Any] = []
    node = raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and part == node.get("type"):
            continue  # discriminator tag of a tagged union
        else:
            out.append(part)
            node = None
    return tuple(out)


def _describe(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "'type' is missing; every sink needs one (jsonl, stdout, webhook, mqtt, kafka)"
    msg = str(err["msg"])
    return redact(msg.removeprefix("Value error, "))


def parse_config(text: str, source: str = "<config>") -> DeploymentConfig:
    """Parse YAML text into a validated config, or raise :class:`ConfigError` listing every problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}YAML syntax error: {problem}"]) from None
    if raw is None:
        raise ConfigError(source, ["the file is empty: at least 'cameras' and 'model' are required"])
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"line 1: the top level must be a mapping of sections, not a {type(raw).__name__}"])
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _node_lines(node, (), lines)
    env_problems: list[tuple[tuple[Any, ...], str]] = []
    data = _substitute(raw, (), env_problems)
    _register_secrets(data)
    found: list[tuple[int, str]] = []
    for path, msg in env_problems:
        found.append((_line_for(path, lines) or 0, f"{_fmt_path(path)} (line {_line_for(path, lines)}): {msg}"))
    found.extend(_duplicate_names(data, lines))
    try:
        cfg = DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            path = _error_path(tuple(err["loc"]), data)
            if err["type"] == "union_tag_invalid":
                path = (*path, "type")
            msg = _describe(err)
            # model-level validators prefix their own sub-path ("cameras[1].name: ...")
            m = re.match(r"^([A-Za-z_][\w\[\].]*): (.*)$", msg)
            if m and not path:
                sub = tuple(int(x) if x.isdigit() else x for x in re.findall(r"[A-Za-z_]\w*|\d+", m[1]))
                path, msg = sub, m[2]
            line = _line_for(path, lines)
            where = f" (line {line})" if line else ""
            found.append((line or 0, f"{_fmt_path(path)}{where}: {msg}"))
        raise ConfigError(source, _ordered(found)) from None
    if found:
        raise ConfigError(source, _ordered(found))
    return cfg


def _ordered(found: list[tuple[int, str]]) -> list[str]:
    out: list[str] = []
    for _, msg in sorted(found, key=lambda x: x[0]):
        if msg not in out:
            out.append(msg)
    return out


def _duplicate_names(data: dict[str, Any], lines: dict[tuple[Any, ...], int]) -> list[tuple[int, str]]:
    """Duplicate camera names, found on the raw data so they are reported next to field errors."""
    out: list[tuple[int, str]] = []
    cams = data.get("cameras")
    if not isinstance(cams, list):
        return out
    first: dict[str, int] = {}
    for i, cam in enumerate(cams):
        if isinstance(cam, dict) and isinstance(cam.get("name"), str):
            key = cam["name"].lower()
            if key in first:
                path = ("cameras", i, "name")
                line = _line_for(path, lines)
                out.append((line or 0, f"{_fmt_path(path)} (line {line}): duplicate camera name {cam['name']!r} "
                                       f"(first used by cameras[{first[key]}])"))
            else:
                first[key] = i
    return out


def load_config(path: str | os.PathLike[str]) -> DeploymentConfig:
    """Read and validate a deployment YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), [f"cannot read the file: {exc}"]) from None
    return resolve_paths(parse_config(text, str(p)), p.resolve().parent)


def _resolve(base: Path, value: str) -> str:
    return value if Path(value).is_absolute() else str(base / value)


def resolve_camera_path(camera: CameraConfig, base: Path) -> CameraConfig:
    """A ``file:relative.mp4`` camera URL made absolute from ``base`` (the deployment file's folder)."""
    parts = urlsplit(camera.url)
    if parts.scheme != "file" or parts.netloc or Path(parts.path).is_absolute():
        return camera
    return camera.model_copy(update={"url": "file://" + str(base / parts.path)})


def resolve_paths(cfg: DeploymentConfig, base: Path) -> DeploymentConfig:
    """Relative paths of a deployment file resolve from that file's folder, not the current directory, so
    a reload (or a service started from elsewhere) means the same files, as users of compose files expect."""
    sinks = [s.model_copy(update={"path": _resolve(base, s.path)}) if isinstance(s, JsonlSinkConfig) else s
             for s in cfg.sinks]
    return cfg.model_copy(update={
        "cameras": [resolve_camera_path(c, base) for c in cfg.cameras],
        "model": cfg.model.model_copy(update={"bundle": _resolve(base, cfg.model.bundle)}),
        "sinks": sinks,
        "evidence": cfg.evidence.model_copy(update={"directory": _resolve(base, cfg.evidence.directory)}),
        "spool": cfg.spool.model_copy(update={"directory": _resolve(base, cfg.spool.directory)}),
        "calibration": cfg.calibration.model_copy(update={"directory": _resolve(base, cfg.calibration.directory)}),
        "feedback": cfg.feedback.model_copy(update={"directory": _resolve(base, cfg.feedback.directory)}),
    })


def parse_camera(raw: Any, cfg: DeploymentConfig, base: Path | None = None) -> CameraConfig:
    """Validate one camera given at run time (API) exactly as a ``cameras`` entry of the file would be:
    same ``${ENV}`` substitution, same checks, same messages (path ``cameras[N]...``, no line numbers)."""
    index = len(cfg.cameras)
    if not isinstance(raw, dict):
        raise ConfigError("camera", [f"cameras[{index}]: a camera must be a mapping, not a {type(raw).__name__}"])
    env_problems: list[tuple[tuple[Any, ...], str]] = []
    data = _substitute(raw, ("cameras", index), env_problems)
    found = [f"{_fmt_path(p)}: {m}" for p, m in env_problems]
    try:
        cam = CameraConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            path = ("cameras", index, *_error_path(tuple(err["loc"]), data))
            found.append(f"{_fmt_path(path)}: {_describe(err)}")
        raise ConfigError("camera", _ordered([(0, f) for f in found])) from None
    if found:
        raise ConfigError("camera", found)
    # the deployment with this camera appended, through the file's own whole-deployment checks
    whole = cfg.model_dump()
    whole["cameras"] = [c.model_dump() for c in (*cfg.cameras, cam)]
    try:
        DeploymentConfig.model_validate(whole)
    except ValidationError as exc:
        for err in exc.errors():
            msg = _describe(err)
            m = re.match(r"^([A-Za-z_][\w\[\].]*): (.*)$", msg)
            found.append(msg if m else f"{_fmt_path(tuple(err['loc']))}: {msg}")
        raise ConfigError("camera", _ordered([(0, f) for f in found])) from None
    return resolve_camera_path(cam, base) if base is not None else cam


def summary(cfg: DeploymentConfig) -> str:
    """A one-screen description of a valid config, with credentials redacted."""
    lines = [f"cameras: {len(cfg.cameras)} ({len(cfg.enabled_cameras)} enabled)"]
    for c in cfg.cameras:
        w = cfg.window_for(c)
        flag = "" if c.enabled else " [disabled]"
        lines.append(f"  - {c.name}: {redact(c.url)} ({c.transport}, window {w.length}, lookahead {w.lookahead}){flag}")
    m = cfg.model
    lines.append(f"model: {m.bundle} (runtime {m.runtime}, device {m.device}, precision {m.precision})")
    if m.encoder is not None:
        lines.append(f"encoder: on {m.encoder.runtime} at {m.encoder.url} (model {m.encoder.model})")
    if cfg.shard is not None:
        lines.append(f"shard: {cfg.shard.index}/{cfg.shard.count} (--shard / SHARD_INDEX take precedence)")
    e = cfg.events
    lines.append(f"events: on {e.on_threshold} / off {e.off_threshold}, min {e.min_duration}s, hold {e.hold}s, "
                 f"cooldown {e.cooldown}s")
    cal = [c.name for c in cfg.cameras if cfg.calibration_for(c).enabled]
    if cal:
        k = cfg.calibration
        lines.append(f"calibration: {', '.join(cal)} (period {k.period:g}s, target {k.target_per_day:g}/day, "
                     f"floor {k.floor:g}, in {k.directory})")
    lines.append("sinks: " + (", ".join(f"{cfg.sink_name(i)} ({s.type})" for i, s in enumerate(cfg.sinks)) or "none"))
    met = cfg.metrics
    lines.append(f"metrics: {'http://' + cfg.http_host + ':' + str(cfg.http_port) + '/metrics' if met.enabled else 'off'}"
                 + (" (console and API at /)" if met.enabled and cfg.http.console else ""))
    ev = cfg.evidence
    lines.append(f"evidence: {ev.directory} (pre {ev.pre_roll}s, post {ev.post_roll}s)" if ev.enabled else "evidence: off")
    lines.append(f"spool: {cfg.spool.directory}; logging: {cfg.logging.level} ({cfg.logging.format})")
    fb = cfg.feedback
    lines.append(f"feedback: {fb.directory} (at most {fb.max_bytes / 2**20:g} MiB; {fb.context_snippets} snippets of "
                 f"context per event)" if fb.enabled else "feedback: off")
    return "\n".join(lines)
