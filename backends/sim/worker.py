"""Simulated SGLang embedding worker: ``python -m backends.sim.worker <sglang args>``.

Accepts the command line of ``python -m sglang.launch_server`` (SGLang 0.5.23 by default,
0.5.2 with ``--sim-sglang-version 0.5.2``) and answers the same HTTP surface, status
codes, error bodies and Prometheus metrics (shared/reference/sglang-surface.md §2, §3,
§7 and Appendix A; where observed behaviour differs, sglang-observed.md wins). No GPU
is used: GPU memory, latency and faults are simulated.

Process shape (like SGLang)
---------------------------
* launcher — this process: HTTP (uvicorn + uvloop + httptools), tokenisation, health
  checks, SIGTERM drain. Its command line is left as started.
* ``sglang::scheduler`` child — does every forward pass and "holds" the simulated GPU
  memory (its pid is what ``/_sim/gpu`` reports and what the GPU registry records).
  SIGSTOP it and embedding requests hang while ``/ping`` and ``/metrics`` stay 200 and
  ``/health`` turns 503 after ``SGLANG_HEALTH_CHECK_TIMEOUT`` (default 20 s); SIGCONT
  and everything recovers. Kill it and the launcher (0.5.23) logs ``Subprocess
  scheduler_0 (pid=N) crashed with exit code -9. Triggering SIGQUIT for cleanup...``,
  waits ``--sim-crash-wait-s``, kills its tree and exits 137. 0.5.2 has no subprocess
  watchdog: the launcher stays up and requests hang.
* ``sglang::detokenizer`` child — idle (for embeddings SGLang's only forwards).
Children die with the launcher (PR_SET_PDEATHSIG) and keep the default SIGTERM action.

Startup
-------
1. "Loading weights" for ``--sim-load-s``: port closed; log ``Load weight begin/end``,
   ``KV Cache is allocated``, ``Memory pool end``, (``Capture cuda graph begin/end``),
   ``max_total_num_tokens=...``. SIGTERM now kills at once.
2. uvicorn up (``Uvicorn running on http://...``); warmup for ``--sim-warmup-s``:
   ``/health`` 503, ``/model_info`` and ``/v1/models`` 200, requests served; then the
   warmup ``GET /model_info`` + ``POST /encode`` go to the worker's own port.
3. ``The server is fired up and ready to roll!``: ``/health`` 200 (after ~1 s: it is a
   deep check that runs a 1-token request through the scheduler).
With ``--skip-server-warmup`` step 2 is skipped. Without ``--is-embedding`` the model
comes up as a generation model (``/v1/embeddings`` → 400, as SGLang). A port already in
use is found only after loading, as in SGLang: uvicorn logs it and the worker exits 1.

Shutdown
--------
SIGTERM (once the first request, normally the warmup, installed SGLang's handler):
``/health`` 503 at once (``Health check request received during shutdown``), requests
still accepted and finished, ``Gracefully exiting... Remaining number of requests N``
every ``--sim-drain-poll-s``; when none remain the tree is killed and the launcher exits
with status 137 (0.5.23; observed on 0.5.17 even after a clean drain) or kills itself
with SIGKILL (0.5.2: returncode -9, shell status 137). While ``/health`` is UnHealthy,
or with ``SGL_FORCE_SHUTDOWN`` set, the drain is skipped. A child that fails
(exception, OOM, scheduler watchdog) SIGQUITs the launcher, which kills the tree the
same way.

GPU memory
----------
Card = ``--sim-gpu-mib`` MiB; GPU index = first entry of ``CUDA_VISIBLE_DEVICES``
(default 0; ``--base-gpu-id`` is accepted and does not change it). The scheduler holds ``round(mem_fraction_static × card)`` (weights
``--sim-weights-mib`` + KV pool at 144 KiB/token) + CUDA graphs (0.5.2: 2560 MiB unless
``--disable-cuda-graph``; 0.5.23: 1536 MiB unless ``--cuda-graph-backend-prefill
disabled``, ``--disable-prefill-cuda-graph`` or the deprecated ``--disable-cuda-graph``)
+ 662 MiB CUDA context + any leak. ``--mem-fraction-static`` defaults to SGLang's
derivation (H100 80GB: 0.874 on 0.5.2, 0.833 on 0.5.23). Workers on one card see each
other through a registry directory (``$EMBEDOPS_SIM_GPU_DIR``, default
``<tmp>/embedops-sim-gpu``; one ``gpu<i>/<pid>.json`` per holder, dead pids ignored):
* fraction too small for the weights → ``RuntimeError: Not enough memory. Please try to
  increase --mem-fraction-static.`` and the worker exits non-zero during load;
* the card cannot fit this worker next to the others (or a leak outgrows it) →
  ``torch.OutOfMemoryError: CUDA out of memory. ...``, non-zero exit.

Latency and capacity
--------------------
A forward batch takes ``--sim-base-latency-ms`` + ``slow_ms`` + ``--sim-per-token-us`` ×
uncached tokens; batches take up to ``--max-running-requests`` requests and
``--chunked-prefill-size`` tokens; the rest wait (``sglang:num_queue_reqs``).
``--max-queued-requests`` → 503 ``The request queue is full.`` Tokens: each word is
ceil(utf-8 bytes / 5) pieces, plus 1 EOS. Vectors: deterministic unit vectors of
``--sim-dim`` floats per input (same text → same vector). The prefix (radix) cache is
on unless ``--disable-radix-cache``; a model with ``--sim-attention bidirectional``
(an encoder) then serves a seen-before text a different vector (cosine 0.856), as
SGLang 0.5.17 did for BERT. Prefill batches are logged at most once a second.

Sim-only flags
--------------
``--sim-sglang-version {0.5.2,0.5.23}``  surface to imitate (default 0.5.23): endpoint
    names, ``dimensions``/``encoding_format`` support, CUDA graph flags, metric names
    and labels, /ping and /ready, exit after SIGTERM, child-crash handling.
``--sim-load-s S``          loading phase, port closed (default 1.0)
``--sim-warmup-s S``        warmup phase, /health 503 (default 0.5)
``--sim-gpu-mib N``         simulated card size (default 81559)
``--sim-weights-mib N``     model weights (default 7680)
``--sim-base-latency-ms F`` per-batch forward time (default 8)
``--sim-per-token-us F``    per-token forward time (default 20)
``--sim-dim N``             embedding dimension = hidden size (default 2560)
``--sim-attention {causal,bidirectional}``  /model_info ``embedding.attention``
    (default causal, as Qwen3-Embedding)
``--sim-crash-wait-s S``    wait after a child crash before the tree kill (default 5,
    as observed)
``--sim-drain-poll-s S``    SIGTERM drain poll interval (default 5, as SGLang)
``--sim-fault NAME[=VALUE]`` fault switch, repeatable (names take ``-`` or ``_``).
    All but ``startup-fail`` take effect once the server is ready (the warmup is not
    affected):
    ``hang``               the forward batch in flight never finishes: requests hang,
                           /health 503 after the health timeout, and the scheduler
                           watchdog kills the tree after --watchdog-timeout + 5 s
    ``stall``              embedding requests never finish (shown as running) while
                           /health keeps passing — what SGLang's own check misses
    ``unstable``           a seen-before text gets a different vector (cosine ≈ 0.856)
                           unless --disable-radix-cache
    ``crash_after_s=S``    the scheduler hits a CUDA error S s later → tree dies (137)
    ``slow_ms=MS``         extra time per forward batch
    ``error_rate=P``       fraction P of embedding requests answered 500
                           (``InternalServerError`` body)
    ``nan``                vectors are all NaN (JSON ``NaN``)
    ``wrong_dim``          vectors have half the dimension
    ``leak_mib_s=R``       scheduler memory grows R MiB/s until CUDA OOM
    ``orphan_child``       spawn ``sglang::scheduler_orphan``: in the worker's process
                           group, ignores SIGTERM, not a child of the launcher (a tree
                           kill misses it), holds 1024 MiB on the card, exits by
                           itself after 600 s
    ``freeze_scheduler``   SIGSTOP the scheduler (SIGCONT when cleared)
    ``startup-fail``       (start only) an init error while loading weights: the
                           scheduler logs ``Scheduler hit an exception``, the tree dies

Tests and tools that start several sim workers should point ``EMBEDOPS_SIM_GPU_DIR``
at a private directory: with the shared default, workers of unrelated runs on the same
simulated card count against each other (and the newcomer OOMs).

Environment: ``SGLANG_HEALTH_CHECK_TIMEOUT`` (s, default 20),
``SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION`` (0.5.23), ``SGL_FORCE_SHUTDOWN``,
``EMBEDOPS_SIM_GPU_DIR``, ``CUDA_VISIBLE_DEVICES``.

Sim-only endpoints (loopback clients only, else 403; no API key needed)
------------------------------------------------------------------------
``GET /_sim/gpu``     ``{"gpu_index", "total_mib", "used_mib", "pid", "util_pct",
                      "temperature_c", "power_w"}``; ``pid`` is the scheduler's,
                      ``used_mib`` this worker's share of the card.
``GET /_sim/faults``  current switches: ``hang, stall, unstable, crash_after_s,
                      slow_ms, error_rate, nan, wrong_dim, leak_mib_s, orphan_child,
                      freeze_scheduler``.
``POST /_sim/faults`` JSON object of partial updates (same keys), or
                      ``{"clear": true}`` (may be combined with updates); returns the
                      new settings; 400 ``{"error": ...}`` for unknown keys or values.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from backends.sim.cli import masked_args, parse_cli


def _configure_logging(level: str) -> None:
    logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
                        level=getattr(logging, level.upper(), logging.INFO), force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one simulated worker until it exits (returns only on argument errors)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_cli(args)
    except ValueError as e:
        _configure_logging("info")
        logging.getLogger("sglang").error("%s", e)
        return 1
    _configure_logging(cfg.log_level)
    log = logging.getLogger("sglang.launcher")
    for w in cfg.deprecation_warnings:
        log.warning(w)
    log.info("server_args=ServerArgs(%s)",
             ", ".join(f"{k}={v!r}" for k, v in masked_args(cfg.args).items()))

    import uvloop

    from backends.sim.engine import Engine
    from backends.sim.http_app import SimApp

    engine = Engine(cfg)
    engine.spawn_children()
    app = SimApp(engine)
    uvloop.run(engine.run(app))
    engine.kill_tree_and_exit()


if __name__ == "__main__":
    sys.exit(main())
