"""The encoder on an NVIDIA Triton Inference Server (KServe v2 over gRPC, ``tritonclient``). No torch.

Why: one Triton (usually on a GPU) serves the encoder for many camera workers and batches their
snippets together (dynamic batching), while each worker keeps its cameras, windows, head and events.
The repository is written by ``dsanet triton-repo`` (``engine.triton_repo``); the runner reads the
served model's metadata at start and sends what it expects: uint8 [B,S,S,3] resized-and-cropped frames
(python backend: the server normalises) or float32 [B,3,S,S] (onnxruntime / tensorrt backends).

Failure handling, because a remote model is a dependency that goes away:

- every request is sent asynchronously (``async_infer``; a batch larger than the server's
  ``max_batch_size`` goes as several requests in flight at once) with a per-request ``timeout``;
- a failed request (server down, timeout, overloaded) is retried with capped exponential backoff until
  the batch has waited ``max_wait`` seconds; an error that cannot heal (wrong input, unknown model) is
  not retried;
- a circuit breaker opens after ``failure_threshold`` consecutive failures: while open no request is
  sent until the next probe time (the delay doubles up to ``backoff_max``), one probe closes it again.
  Its state is what ``health()`` reports, so the outage shows on ``/readyz`` and in the metrics
  (``stream.remote``), and scoring resumes by itself when a probe succeeds.

While the encoder waits, the worker's bounded encoder queue keeps the newest snippets (the oldest are
dropped and counted): a short outage costs nothing, a long one costs counted snippets, never a hang.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.bundle import Bundle
from engine.errors import InputError, RuntimeUnavailable
from engine.preprocess import _as_batches, _check_frame, _resize_region, resized_size
from engine.runtime import ENCODER, EncoderModel, ModelPart, Runner, register_runtime

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# gRPC codes worth retrying: the server is away, slow or busy (anything else will fail the same way again)
RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED", "INTERNAL",
             "UNKNOWN")
TRITON_DTYPES = {"UINT8": np.uint8, "FP32": np.float32}


def _import_client() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as exc:
        raise RuntimeUnavailable("tritonclient is not installed: pip install 'dsanet-stream[triton]'") from exc
    return grpcclient


class RemoteError(RuntimeUnavailable):
    """The Triton server did not serve a request (``retryable`` says whether trying again may help)."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class RemoteHealth:
    """A snapshot of the remote encoder for readiness and metrics (crosses threads)."""

    target: str
    model: str
    circuit: str
    ready: bool
    outage_seconds: float
    requests_ok: int
    requests_failed: int
    retries: int
    batches_failed: int
    bytes_sent: int
    images: int
    last_error: str | None


class CircuitBreaker:
    """Closed -> open after ``threshold`` consecutive failures; open -> half-open at the probe time."""

    def __init__(self, threshold: int = 3, initial: float = 0.25, maximum: float = 5.0) -> None:
        self.threshold = max(1, int(threshold))
        self.initial, self.maximum = float(initial), max(float(maximum), float(initial))
        self.state = CLOSED
        self.failures = 0
        self.delay = self.initial
        self.next_probe = 0.0
        self.opened_at: float | None = None
        self._lock = threading.Lock()

    def wait_time(self, now: float) -> float:
        """Seconds until a request may be sent (0 when closed or a probe is due)."""
        with self._lock:
            if self.state == CLOSED:
                return 0.0
            if now >= self.next_probe:
                self.state = HALF_OPEN
                return 0.0
            return self.next_probe - now

    def success(self) -> bool:
        """Record a success; True when it closed an open circuit."""
        with self._lock:
            reopened = self.state != CLOSED
            self.state, self.failures, self.delay, self.opened_at = CLOSED, 0, self.initial, None
            return reopened

    def failure(self, now: float) -> bool:
        """Record a failure; True when it (re)opened the circuit."""
        with self._lock:
            self.failures += 1
            if self.state == HALF_OPEN or self.failures >= self.threshold:
                if self.opened_at is None:
                    self.opened_at = now
                opened = self.state == CLOSED
                self.state = OPEN
                self.next_probe = now + self.delay
                self.delay = min(self.delay * 2.0, self.maximum)
                return opened
            return False


def crop_frames(frames: Any, size: int, interpolation: str) -> np.ndarray:
    """The uint8 half of ``engine.preprocess``: short side -> ``size``, centre crop; [N,size,size,3] uint8.

    Bit-identical to the pixels ``preprocess_frames`` normalises (same resize code), so a Triton
    python-backend repository that normalises on the server reproduces the in-process input exactly.
    """
    outs = []
    for batch in _as_batches(frames):
        batch = _check_frame(batch)
        _, h, w, _ = batch.shape
        out_h, out_w = resized_size(h, w, size)
        top, left = (out_h - size) // 2, (out_w - size) // 2
        outs.append(np.ascontiguousarray(_resize_region(batch, out_h, out_w, top, left, size, size, interpolation)))
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)


@register_runtime("triton")
class TritonRunner(Runner):
    """Runs the encoder on a Triton server. Options (see ``stream.config.TritonEncoderConfig``): ``url``
    (host:port of the gRPC endpoint), ``model``, ``model_version``, ``timeout``, ``max_wait``,
    ``failure_threshold``, ``backoff_initial``, ``backoff_max``, ``connect_timeout``."""

    precisions = ("fp32", "fp16", "bf16", "int8")  # whatever the server runs; describe() says the backend

    @classmethod
    def probe(cls, device: str) -> str | None:
        """Never a local choice (so ``auto`` and ``available_runtimes`` skip it): it needs a server."""
        return ("the triton runtime runs on a remote server: configure it under model.encoder "
                "(runtime: triton, url, model)")

    def _build(self) -> None:
        if self.part.kind != ENCODER:
            raise RuntimeUnavailable("the triton runtime serves the encoder only (the head runs in the worker)")
        grpc = _import_client()
        o = self.options
        self.url = str(o.get("url", "127.0.0.1:8001"))
        self.model = str(o.get("model", "dsanet_encoder"))
        self.model_version = str(o.get("model_version", ""))
        self.timeout = float(o.get("timeout", 5.0))
        self.max_wait = float(o.get("max_wait", 10.0))
        self.connect_timeout = float(o.get("connect_timeout", 60.0))
        self.backoff_initial = float(o.get("backoff_initial", 0.1))
        self.backoff_max = float(o.get("backoff_max", 2.0))
        self.breaker = CircuitBreaker(int(o.get("failure_threshold", 3)), self.backoff_initial, self.backoff_max)
        self._grpc = grpc
        try:
            self.client = self._make_client()
        except Exception as exc:  # a malformed url
            raise RuntimeUnavailable(f"triton: cannot make a client for {self.url!r}: {exc}") from exc
        self._lock = threading.Lock()
        self.requests_ok = self.requests_failed = self.retries = self.batches_failed = 0
        self.bytes_sent = self.images = 0
        self.last_error: str | None = None
        self._inspect()

    def _make_client(self) -> Any:
        """A client whose channel reconnects within ``backoff_max`` after a restart of the server (gRPC's
        own default backs off up to 120 s, which would keep a worker idle long after Triton is back)."""
        grpc = self._grpc
        size = int(getattr(grpc, "MAX_GRPC_MESSAGE_SIZE", 2**31 - 1))
        args = [
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            ("grpc.initial_reconnect_backoff_ms", max(50, int(self.backoff_initial * 1000))),
            ("grpc.min_reconnect_backoff_ms", max(50, int(self.backoff_initial * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(100, int(self.backoff_max * 1000))),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", max(1000, int(self.timeout * 1000))),
        ]
        return grpc.InferenceServerClient(url=self.url, verbose=False, channel_args=args)

    # ------------------------------------------------------------------------------------ start-up
    def _inspect(self) -> None:
        """Wait for the model to be ready (bounded), then read what it takes and check it fits the bundle."""
        deadline = time.monotonic() + self.connect_timeout
        why = "no answer"
        while True:
            try:
                if self.client.is_model_ready(self.model, self.model_version, client_timeout=min(2.0, self.timeout)):
                    break
                why = f"model {self.model!r} is not ready (not loaded, or failed to load)"
            except Exception as exc:  # connection refused, timeout
                why = _short(exc)
            if time.monotonic() >= deadline:
                raise RuntimeUnavailable(f"triton at {self.url}: {why} after {self.connect_timeout:g}s "
                                         "(is the server running and the repository written by `dsanet triton-repo`?)")
            time.sleep(0.2)
        meta = self.client.get_model_metadata(self.model, self.model_version, as_json=True,
                                              client_timeout=self.timeout)
        config = self.client.get_model_config(self.model, self.model_version, as_json=True,
                                              client_timeout=self.timeout).get("config", {})
        inputs, outputs = meta.get("inputs", []), meta.get("outputs", [])
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeUnavailable(f"triton model {self.model!r} has {len(inputs)} inputs / {len(outputs)} outputs; "
                                     "the encoder has one of each (write the repository with `dsanet triton-repo`)")
        b = self.part.bundle
        s, d = b.preprocessing.size, b.embedding_width
        self.input_name, self.output_name = inputs[0]["name"], outputs[0]["name"]
        self.datatype = inputs[0]["datatype"]
        shape = [int(x) for x in inputs[0]["shape"]][1:]
        expected = {"UINT8": [s, s, 3], "FP32": [3, s, s]}.get(self.datatype)
        if expected is None or shape != expected:
            raise RuntimeUnavailable(f"triton model {self.model!r} takes {self.datatype} {shape}; this bundle needs "
                                     f"UINT8 [{s},{s},3] or FP32 [3,{s},{s}] (a repository of another bundle?)")
        out_shape = [int(x) for x in outputs[0]["shape"]][1:]
        if out_shape != [d]:
            raise RuntimeUnavailable(f"triton model {self.model!r} returns {out_shape}, the bundle's head takes "
                                     f"{d}-d embeddings (a repository of another bundle?)")
        params = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
        served = params.get("dsanet_bundle_hash")
        if served and served != b.content_hash[:16]:
            log.warning("triton model %r was written from bundle hash %s, this worker loaded %s: check that "
                        "both come from the same bundle", self.model, served, b.content_hash[:16])
        self.server_max_batch = max(1, int(config.get("max_batch_size") or 1))
        self.backend = str(config.get("backend") or config.get("platform") or "?")
        self.dtype = TRITON_DTYPES[self.datatype]

    def warmup(self, iterations: int = 2) -> None:
        s = self.part.bundle.preprocessing.size
        shape = (1, s, s, 3) if self.datatype == "UINT8" else (1, 3, s, s)
        for _ in range(iterations):
            self.run({self.input_name: np.zeros(shape, dtype=self.dtype)})

    # ----------------------------------------------------------------------------------- inference
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(inputs) != 1:
            raise InputError(f"the triton encoder takes one input, got {sorted(inputs)}")
        (x,) = inputs.values()
        if x.dtype != self.dtype:
            raise InputError(f"triton model {self.model!r} takes {self.datatype}, got {x.dtype}")
        x = np.ascontiguousarray(x)
        chunks = [x[i:i + self.server_max_batch] for i in range(0, x.shape[0], self.server_max_batch)]
        results: list[np.ndarray | None] = [None] * len(chunks)
        start = time.monotonic()
        deadline = start + self.max_wait
        delay = self.backoff_initial
        while True:
            now = time.monotonic()
            wait, final = self.breaker.wait_time(now), False
            if wait > 0:
                if now + wait < deadline:
                    time.sleep(wait)
                    continue
                # the next probe falls after this batch's deadline: one last try when the time is up
                time.sleep(max(0.0, deadline - now))
                final = True
            todo = [i for i, r in enumerate(results) if r is None]
            errors = self._send(chunks, todo, results)
            now = time.monotonic()
            if not errors:
                opened = self.breaker.opened_at
                if self.breaker.success():
                    log.warning("triton at %s: serving again after %.1fs", self.url,
                                now - (opened if opened is not None else start))
                with self._lock:
                    self.last_error = None
                return {self.part.output_names[0]: np.concatenate(results, axis=0)}  # type: ignore[arg-type]
            err = errors[0]
            with self._lock:
                self.last_error = str(err)
            if not err.retryable:
                self._count_failed_batch()
                raise err
            if self.breaker.failure(now):
                log.error("triton at %s: circuit open after %d failure(s) (%s); retrying with backoff",
                          self.url, self.breaker.failures, err)
            if final or now + delay > deadline:
                self._give_up(start)
            with self._lock:
                self.retries += 1
            time.sleep(delay)
            delay = min(delay * 2.0, self.backoff_max)

    def _send(self, chunks: list[np.ndarray], todo: list[int], results: list[np.ndarray | None]) -> list[RemoteError]:
        """Send the ``todo`` chunks at once (async), wait for all; fill ``results``; return the errors."""
        grpc = self._grpc
        done = [threading.Event() for _ in todo]
        errors: list[RemoteError] = []

        def callback(slot: int, index: int) -> Any:
            def cb(result: Any, error: Any) -> None:
                try:
                    if error is not None:
                        errors.append(_remote_error(error, self.url))
                    else:
                        results[index] = result.as_numpy(self.output_name).astype(np.float32, copy=False)
                except Exception as exc:  # a malformed answer
                    errors.append(RemoteError(f"triton at {self.url}: bad response: {_short(exc)}", retryable=False))
                finally:
                    done[slot].set()
            return cb

        sent = 0
        for slot, index in enumerate(todo):
            chunk = chunks[index]
            inp = grpc.InferInput(self.input_name, list(chunk.shape), self.datatype)
            inp.set_data_from_numpy(chunk)
            try:
                self.client.async_infer(self.model, [inp], callback(slot, index), model_version=self.model_version,
                                        outputs=[grpc.InferRequestedOutput(self.output_name)],
                                        client_timeout=self.timeout)
                sent += chunk.nbytes
            except Exception as exc:  # raised before the request left (channel closed...)
                errors.append(_remote_error(exc, self.url))
                done[slot].set()
        for ev in done:
            if not ev.wait(self.timeout + 1.0):  # the client deadline fires first; this is a backstop
                errors.append(RemoteError(f"triton at {self.url}: no answer within {self.timeout:g}s"))
                break
        with self._lock:
            self.bytes_sent += sent
            n_err = len(errors)
            self.requests_failed += n_err
            self.requests_ok += max(0, len(todo) - n_err)
            if not errors:
                self.images += sum(chunks[i].shape[0] for i in todo)
        return errors

    def _count_failed_batch(self) -> None:
        with self._lock:
            self.batches_failed += 1

    def _give_up(self, start: float) -> None:
        self._count_failed_batch()
        raise RemoteError(f"triton at {self.url} unavailable for {time.monotonic() - start:.1f}s "
                          f"(circuit {self.breaker.state}; last error: {self.last_error}); batch dropped")

    # ------------------------------------------------------------------------------------- status
    def health(self) -> RemoteHealth:
        b = self.breaker
        with self._lock:
            opened = b.opened_at
            return RemoteHealth(
                target=self.url, model=self.model, circuit=b.state, ready=b.state == CLOSED,
                outage_seconds=0.0 if opened is None else time.monotonic() - opened,
                requests_ok=self.requests_ok, requests_failed=self.requests_failed, retries=self.retries,
                batches_failed=self.batches_failed, bytes_sent=self.bytes_sent, images=self.images,
                last_error=self.last_error)

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "model": self.part.kind, "url": self.url, "triton_model": self.model,
                "backend": self.backend, "input": f"{self.datatype} {self.input_name}",
                "server_max_batch": self.server_max_batch, "device": "remote",
                "preprocessing": "worker crops, server normalises" if self.datatype == "UINT8"
                else "worker (float32 on the wire)"}

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a client whose server is gone
            log.debug("triton client close failed", exc_info=True)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _remote_error(exc: Any, url: str) -> RemoteError:
    status = ""
    get = getattr(exc, "status", None)
    if callable(get):
        status = str(get() or "")
    code = status.rsplit(".", 1)[-1] if status else ""
    retryable = (code in RETRYABLE) if code else True
    return RemoteError(f"triton at {url}: {code or type(exc).__name__}: {_short(exc)}", retryable=retryable)


class TritonEncoderModel(EncoderModel):
    """``EncoderModel`` whose input is what the server takes; ``preprocess`` makes exactly that.

    The service calls ``preprocess`` in the reader threads and ``embed`` in the encoder worker, as for
    a local encoder; only the array in between differs (uint8 [S,S,3] crops for the python backend).
    """

    runner: TritonRunner

    def __init__(self, bundle: Bundle, runner: TritonRunner) -> None:
        super().__init__(bundle, runner)
        self.max_batch = max(bundle.encoder.max_batch, runner.server_max_batch)
        self.wire_uint8 = runner.datatype == "UINT8"

    def preprocess(self, frames: Any) -> np.ndarray:
        p = self.bundle.preprocessing
        if self.wire_uint8:
            return crop_frames(frames, p.size, p.interpolation)
        return p(frames)

    def embed(self, images: np.ndarray) -> np.ndarray:
        if not self.wire_uint8:
            return super().embed(images)
        s = self.size
        a = np.asarray(images)
        if a.ndim != 4 or a.shape[1:] != (s, s, 3):
            raise InputError(f"triton encoder input must be [B,{s},{s},3] uint8 crops (TritonEncoderModel.preprocess), "
                             f"got shape {list(a.shape)}")
        if a.dtype != np.uint8:  # crops that went through a float array on the way keep their exact values
            a = a.astype(np.uint8)
        if a.shape[0] == 0:
            return np.zeros((0, self.width), dtype=np.float32)
        out = self.runner.run({self.runner.input_name: a})[self.bundle.encoder.output]
        return np.asarray(out, dtype=np.float32)

    def health(self) -> RemoteHealth:
        return self.runner.health()


def load_triton_encoder(bundle: Bundle, **options: Any) -> TritonEncoderModel:
    """Connect to Triton (waiting up to ``connect_timeout``), check the served model, warm up."""
    runner = TritonRunner(ModelPart(bundle, ENCODER), device="cpu", **options)
    log.info("runtime triton (%s): %s", bundle.name, runner.describe())
    return TritonEncoderModel(bundle, runner)


def load_with_remote_encoder(model_cfg: Any) -> tuple[Bundle, TritonEncoderModel, Any]:
    """``load_models`` for a deployment whose encoder runs on Triton: the head is built here on
    ``model_cfg.runtime`` (and ``device``/``precision``/``threads``), the encoder is the Triton client."""
    from engine.bundle import load_bundle
    from engine.runtime import HEAD, HeadModel, create_auto, create_runner, normalise_device

    bundle = load_bundle(model_cfg.bundle)
    part = ModelPart(bundle, HEAD)
    device = normalise_device(model_cfg.device)
    if model_cfg.runtime == "auto":
        head, _ = create_auto(part, device=device, precision=model_cfg.precision, threads=model_cfg.threads,
                              head_int8=model_cfg.head_int8)
    else:
        head = create_runner(model_cfg.runtime, part, device=device, precision=model_cfg.precision,
                             threads=model_cfg.threads, head_int8=model_cfg.head_int8)
    encoder = load_triton_encoder(bundle, **model_cfg.encoder.runner_options())
    return bundle, encoder, HeadModel(bundle, head)
