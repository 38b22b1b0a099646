// Sweeps: many real SGD runs of one model on one data set, over a grid of
// batch sizes × learning rates × replicas, advanced together, with the noise
// profiled along the way (docs/MATH.md "Minibatch variance for every batch size",
// "What the seed papers predict").
//
// Every run is a pure function of (initial θ, data, its batch size and
// learning rate, its replica index, the seed): the same run gives the same
// bits alone or inside any grid, on any number of threads, and after a resume
// from a checkpoint. Randomness is counter-based (Philox4x32-10, Random123)
// keyed by the seed, with the replica, the step and the slot in the counter,
// so replica r draws the same minibatches at every grid point of the same
// batch size (common random numbers: differences between learning rates are
// not swamped by sampling noise).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gradnoise/data.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise {

/// How each step's minibatch is drawn.
enum class Sampling {
  /// b i.i.d. uniform rows per step.
  with_replacement,
  /// Random reshuffling: a fresh permutation each epoch (a keyed Feistel
  /// network evaluated per row, docs/SWEEP.md), cut into floor(N/b) batches
  /// of b rows; the last N mod b rows of an epoch are skipped (each batch is
  /// then a uniform b-subset).
  without_replacement,
  /// Rows (t·b + s) mod N, s = 0..b−1, at step t: the data in order, no
  /// randomness.
  fixed,
};

/// "with", "without", "fixed": the CLI's and the reports' names.
std::string sampling_name(Sampling sampling);
/// The sampling sampling_name calls `name`; nullopt for any other.
std::optional<Sampling> sampling_named(std::string_view name);

struct SweepConfig {
  Loss loss = Loss::squared;
  std::vector<std::int64_t> batch_sizes;
  std::vector<double> lrs;
  std::int64_t replicas = 1;
  /// Replica indices run are first_replica .. first_replica + replicas − 1,
  /// so one replica of a sweep can be replayed alone, or a sweep split.
  std::int64_t first_replica = 0;
  std::int64_t steps = 0;
  Sampling sampling = Sampling::with_replacement;
  /// σ: every drawn target gets fresh N(0, σ²) noise per output (squared loss
  /// only). The logged training loss is then the expected loss over the
  /// noise, L(θ) + K σ²/2: the objective SGD is minimising.
  double label_noise = 0;
  /// Adds weight_decay · θ to every minibatch gradient (all parameters).
  double weight_decay = 0;
  /// Heavy ball: v ← μ v + g, θ ← θ − λ v (μ = 0: plain SGD, θ ← θ − λ g).
  double momentum = 0;
  /// Log every this many steps (and always at 0 and at `steps`).
  std::int64_t log_every = 0;
  std::uint64_t seed = 0;
  /// At each log step, profile the noise of every run (‖G‖², tr Σ, B_simple)
  /// with the exact CPU engine; false skips it (the loss is still logged).
  bool profile = true;
  /// A run has diverged when a minibatch or full loss exceeds this factor
  /// times the expected loss at the start (L(θ₀) + K σ²/2), or a loss or
  /// weight stops being finite. It then stops and is reported as diverged.
  double divergence_factor = 1e6;
  /// Worker threads for the runs (0: one per hardware thread). Results do not
  /// depend on it.
  int threads = 0;
  /// Where the SGD steps run: cpu (the default); cuda (the GPU sweep engine,
  /// one thread per run; RuntimeError without a device); automatic (the GPU
  /// when there is one and the model is small: P ≤ 4096, D ≤ 4096, at most
  /// kSweepCudaMaxLayers layers). Profiles, losses and statistics at logged
  /// steps are computed on the CPU either way. On the GPU the squared loss
  /// without label noise gives the CPU's bits; exp, log, sin and cos (cross-
  /// entropy, label noise) may differ from glibc in the last ulp.
  Device device = Device::cpu;
};

/// One run at one logged step. Statistics at θ_t (after t updates); the
/// minibatch ones are of batch t, the one that makes update t + 1.
struct SweepRow {
  std::int64_t run = 0;
  std::int64_t batch_size = 0;
  double lr = 0;
  std::int64_t replica = 0;
  std::int64_t step = 0;
  double epoch = 0;  // t·b/N
  /// "ok", or "diverged" in the run's last row (at the step where it
  /// diverged; the statistics below are then absent).
  bool diverged = false;
  double train_loss = 0;  // L(θ_t) on the training data (+ K σ²/2 with label noise)
  std::optional<double> test_loss, test_accuracy;
  /// The exact profile at θ_t (empty when SweepConfig::profile is false).
  std::optional<double> grad_norm_sq, trace_cov, noise_scale_simple;
  double minibatch_loss = 0;
  double minibatch_grad_norm_sq = 0;  // ‖g_t‖² of the minibatch gradient (without decay)
  double weight_norm_sq = 0;          // ‖θ_t‖²
};

/// Across the live replicas of one grid point at one logged step.
struct ReplicaStats {
  std::int64_t step = 0;
  std::int64_t live_replicas = 0;
  /// tr of the sample covariance (divisor R − 1) of θ_t across replicas;
  /// empty with fewer than two live replicas.
  std::optional<double> weight_var;
  /// tr of the sample covariance of the minibatch gradients g_t across
  /// replicas: Var(g_t) over all the randomness up to and including step t,
  /// the quantity Qian & Klabjan study.
  std::optional<double> grad_var;
  /// The mean over replicas of the conditional noise E[‖g_t − G(θ_t)‖² | θ_t]:
  /// tr Σ(θ_t)/b with replacement, c(b) tr Σ(θ_t) without, 0 fixed. With the
  /// spread of G(θ_t) across replicas it makes up grad_var. Empty without
  /// profiles.
  std::optional<double> expected_minibatch_noise;
  std::optional<double> train_loss_mean, train_loss_std;
  std::optional<double> test_loss_mean, test_accuracy_mean;
};

struct GridPointSummary {
  std::int64_t batch_size = 0;
  double lr = 0;
  /// Per live replica, the mean logged training loss over the steps
  /// t ≥ steps/2; then the mean and the sample standard deviation over
  /// replicas (empty when no replica, or for the deviation fewer than two,
  /// survived).
  std::optional<double> train_loss_mean, train_loss_std;
  /// tr of the weights' sample covariance across replicas at the end.
  std::optional<double> weight_var;
  double diverged_fraction = 0;
  std::vector<ReplicaStats> trajectory;  // one per logged step
};

/// A run that diverged: where, and why.
struct Divergence {
  std::int64_t run = 0;
  std::int64_t step = 0;
  std::string reason;
};

struct SweepResult {
  std::int64_t num_params = 0;
  std::int64_t n = 0;
  std::vector<SweepRow> rows;                // by logged step, then run
  std::vector<GridPointSummary> grid;        // batch size major, then lr
  std::vector<Divergence> divergences;       // by run
  std::vector<std::vector<double>> final_weights;  // per run (docs/MATH.md flattening)
  double elapsed_s = 0;
  std::int64_t run_steps = 0;  // SGD steps taken, all runs together
  /// Where the SGD steps ran: "cpu", or "cuda: " and the GPU's name.
  std::string device;
};

/// A sweep in progress. Runs are numbered grid point major:
/// run = ((batch index · #lrs) + lr index) · replicas + (replica − first_replica).
class Sweep {
 public:
  /// Throws InputError unless the model, data, test data (may be null) and
  /// config fit together: batch sizes in 1..N (and ≤ N without replacement),
  /// finite positive learning rates, replicas ≥ 1, steps ≥ 1, log_every ≥ 1,
  /// label noise only with squared loss, momentum in [0, 1), and so on.
  Sweep(const Model& initial, const Dataset& train, const Dataset* test, SweepConfig config);
  ~Sweep();
  Sweep(const Sweep&) = delete;
  Sweep& operator=(const Sweep&) = delete;

  std::int64_t num_runs() const;
  /// Logged steps: 0, log_every, 2·log_every, ..., steps.
  const std::vector<std::int64_t>& log_steps() const;
  /// Log points done so far (0 before the first; log_steps().size() at the end).
  std::int64_t logs_done() const;
  bool done() const;
  /// Where the SGD steps run: "cpu", or "cuda: " and the GPU's name.
  const std::string& device() const;

  /// Advances every run to the next logged step and records it.
  void advance();
  /// advance() until done; `progress(logs_done, total)` after each.
  void run(const std::function<void(std::int64_t, std::int64_t)>& progress = {});

  /// Everything recorded so far, with the grid summaries.
  SweepResult result() const;

  /// The whole state as bytes (CBOR), and its inverse. restore() throws
  /// InputError when the bytes were written by a sweep with another config,
  /// data or starting model.
  std::string checkpoint() const;
  void restore(const std::string& bytes);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

/// The CSV of a result's rows: header, then one line per row.
std::string sweep_rows_csv(const SweepResult& result);

}  // namespace gradnoise
