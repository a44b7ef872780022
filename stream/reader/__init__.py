"""Camera readers: one PyAV thread per camera, with timeouts, reconnects and an explicit state.

Why it looks like this (measured in ``docs/environment.md``):

* A killed RTSP server ends PyAV's demux loop *normally*, without an exception; a frozen one blocks a read
  for ever unless a timeout is set. So every open passes both FFmpeg's ``timeout`` option (microseconds,
  honoured by the RTSP and HTTP protocols) and PyAV's own ``timeout=(open_s, read_s)`` interrupt, and a
  live source whose loop ends for any reason is treated as a disconnect.
* Packets are demuxed and decoded separately: an exception from *decoding* one packet is a decode error
  (counted; the decoder resynchronises at the next decodable packet), an exception from *reading* is a
  connection failure (reconnect). A long run of consecutive decode errors also forces a reconnect.
* Reconnects use capped exponential backoff with jitter (:class:`Backoff`); the delay resets once a session
  has streamed healthily for ``reset_after`` seconds, so a flapping camera does not hammer its server.
* Each reader owns its thread and hands frames to a consumer *synchronously* in that thread. The consumer
  (the snippet cutter) is cheap and never blocks: it pushes into a bounded drop-oldest queue. So one
  camera's trouble (a hung socket, a slow decoder) can never slow another camera.
* Frames are handed over *undecoded to RGB* (:class:`LazyFrame`): converting YUV to RGB costs more than
  decoding at typical sizes, and only one frame per snippet is ever embedded, so only that one is
  converted. Each frame keeps its own size, so a resolution change mid-stream needs no special case.

Capture time (the clock snippets are cut on) is the *stream timestamp mapped to the wall clock*:

* live sources (:class:`LiveClock`): ``capture = anchor_wall + (pts - anchor_pts)``. The anchor is the
  frame that arrived with the least delay so far (whenever a frame would map later than its own arrival,
  the anchor moves back), so network bursts do not squeeze or stretch snippets the way arrival times
  would. Timestamps that go backwards or drift more than ``max_drift`` seconds from arrival re-anchor on
  the arrival time; frames without a timestamp use their arrival time.
* file sources (:class:`MediaClock`): ``capture = start_wall + media time``, continued seamlessly across
  loops. When ``realtime`` is on the reader sleeps so that frames are released at that capture time
  (like a camera); when off it reads as fast as it can and capture times run ahead of the wall clock
  (batch replay: snippets still cover exactly the media time the model was trained on).

Evidence (``stream.evidence``): when a :class:`PacketSink` is given, every demuxed packet is also handed
over *compressed* (a copy of its bytes) with its capture time on the same clock as the frames: ``packet
time + (capture - pts)`` of the latest decoded frame of the session, so event times map to packets. The
packets of a session before its first decoded frame wait (at most 512) until that offset is known. A new
session, or a frame whose size or pixel format differs from the previous one, starts a new segment (a clip
never crosses one). Without a sink nothing is buffered.

Credentials never reach a log line: URLs go through :func:`stream.redact.redact_url` and FFmpeg's
messages through :func:`stream.redact.redact`.

Modules: ``state`` (CameraState, source kinds), ``backoff``, ``clocks`` (live and media capture clocks),
``frames`` (LazyFrame, FrameConsumer), ``protocols`` (packet sink, reader metrics), ``settings``
(ReaderSettings, ReaderStats), ``loop`` (CameraReader, the thread; it forwards packets to the ring).
"""

from stream.reader.backoff import Backoff, BackoffPolicy
from stream.reader.clocks import LiveClock, MediaClock
from stream.reader.frames import FrameCallback, FrameConsumer, LazyFrame
from stream.reader.loop import CameraReader
from stream.reader.protocols import MAX_PENDING_PACKETS, NullReaderMetrics, PacketSink, ReaderMetrics
from stream.reader.settings import ReaderSettings, ReaderStats, make_reader_settings
from stream.reader.state import LIVE_SCHEMES, CameraState, SourceError, file_path, source_kind

__all__ = ["Backoff", "BackoffPolicy", "CameraReader", "CameraState", "FrameCallback", "FrameConsumer", "LIVE_SCHEMES", "LazyFrame", "LiveClock", "MAX_PENDING_PACKETS", "MediaClock", "NullReaderMetrics", "PacketSink", "ReaderMetrics", "ReaderSettings", "ReaderStats", "SourceError", "file_path", "make_reader_settings", "source_kind"]
