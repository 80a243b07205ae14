"""The compiled scoring kernel: one pass per batch, cost proportional to readings x channels.

The torch path (`streamer.scoring.pipeline`, wave by wave) is the definition of scoring; this package
computes the same thing for a CPU pipeline without per-wave overhead. `walk.run` walks each device's
readings of a batch in order — admission (out-of-order drop, gap reset), normalisation, the recurrent
step with the torch model's weights (GRU or LSTM), per-channel evidence, the cross-channel relation,
calibration, the alert policy with its held normal — devices spread over threads, reading and writing
the pipeline's `StateStore` in place. Events are built afterwards from the per-reading transitions
(`scorer`).

Falls back to the torch waves, for the whole batch, counted in `ScoringPipeline.kernel_fallbacks`:
- a batch in which some device's clock re-bases (`event_time`: its run of readings behind its clock
  completes), or one re-initialised for a new channel set (`shape`): both rare, both intricate;
- a pipeline on CUDA, or configured with `path="torch"` (`RNNWATCH_SCORING_PATH=torch`), never uses
  it.

Modules: `jit` (how it is compiled and cached), `half` (float16 storage), `slab` (the store's arrays,
settings, weights), `cell` (recurrent step), `rows` (one channel), `covariance` (the relation),
`decide` (calibration and alert policy), `walk` (one reading, one device, every device),
`admission` (event time decided up front), `scorer` (the pipeline's entry point).
"""

# PipelineConfig.path / RNNWATCH_SCORING_PATH; the first is the default. The kernel is the default on the
# CPU: it equals the torch waves to 1e-5 on random fleets and on TEP; on NAB's 58 files it differs by up
# to 7e-5 on a handful of readings and by 0.24 on one (the onset damping's "beats the decayed peak"
# decided the other way by a float16 rounding), which moves the NAB scores by 0.03-0.10 (see
# docs/ARCHITECTURE.md, "Scoring"). `torch` keeps the waves, the definition, everywhere.
PATHS = ("kernel", "torch")
