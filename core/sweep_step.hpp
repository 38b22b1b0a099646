// One sweep run's SGD arithmetic as __host__ __device__ functions: the
// minibatch draws (Philox streams 1–3, docs/SWEEP.md "Randomness and
// reproducibility"), the per-sample forward and backward pass, the mean
// gradient and the (heavy-ball) update, with the divergence rule of the CPU
// engine. The GPU sweep engine (kernels/sweep_cuda.cu) runs these with one
// thread per run; tests/test_sweep_cuda.cpp runs them on the CPU against the
// CPU engine (host/sweep.cpp), bit for bit.
//
// Order of operations: exactly the CPU engine's and the plain reference loop's
// (tests/test_sweep.cpp reference_run), one sample at a time: z_o = Σ_j W_oj a_j
// over j ascending from 0.0, then + b_o; δ_{l−1,j} = Σ_o W_oj δ_{l,o} over o
// ascending from 0.0; every gradient entry summed over the batch in draw order
// from 0.0, then divided by b; then + WD·θ, then v ← μv + g, θ ← θ − λv (or
// θ ← θ − λg). Compile with -ffp-contract=off (host) and -fmad=false (nvcc)
// so that no multiply-add is fused.
//
// Scratch is fixed-size and passed in by the caller as strided views, so the
// GPU can interleave the runs (entry i of run r at [i·runs + r]: neighbouring
// threads touch neighbouring addresses) while the CPU uses stride 1.
#pragma once


#include <cmath>
#include <cstdint>

#include "gradnoise/model.hpp"
#include "gradnoise/sweep.hpp"

#include "host_device.hpp"
#include "losses.hpp"
#include "random.hpp"

namespace gradnoise::sweep_step {

/// Layers a run may have (the shapes travel by value in the kernel's
/// parameters).
constexpr int kMaxLayers = 16;


struct LayerDims {
  std::int64_t in = 0, out = 0;
  std::int64_t offset = 0;  // of W in θ; b (when bias) follows W
  bool bias = false;
};

struct ModelDims {
  int num_layers = 0;
  LayerDims layers[kMaxLayers];
  std::int64_t num_params = 0;
  /// a_l of one sample (l ≥ 1; a_0 is read from the data) starts at
  /// act_offset[l] of the activation scratch; act_size is the total.
  std::int64_t act_offset[kMaxLayers + 1] = {};
  std::int64_t act_size = 0;
  std::int64_t widest = 0;  // the widest layer output, the δ buffers' size
};

/// Fills the derived sizes from the layers' shapes (num_layers and layers set).
inline void finish_dims(ModelDims& dims) {
  dims.num_params = 0;
  dims.act_size = 0;
  dims.widest = 0;
  for (int l = 0; l < dims.num_layers; ++l) {
    LayerDims& layer = dims.layers[l];
    layer.offset = dims.num_params;
    dims.num_params += layer.in * layer.out + (layer.bias ? layer.out : 0);
    dims.act_offset[l + 1] = dims.act_size;
    dims.act_size += layer.out;
    if (layer.out > dims.widest) dims.widest = layer.out;
  }
}

/// The shapes of `model`, which must have at most kMaxLayers layers.
inline ModelDims model_dims(const Model& model) {
  ModelDims dims;
  dims.num_layers = static_cast<int>(model.num_layers());
  for (int l = 0; l < dims.num_layers; ++l) {
    const Layer& layer = model.layers[static_cast<std::size_t>(l)];
    dims.layers[l].in = layer.in;
    dims.layers[l].out = layer.out;
    dims.layers[l].bias = layer.has_bias();
  }
  finish_dims(dims);
  return dims;
}

/// Everything the runs share: the model's shapes, the training data (row
/// major, float64), the options.
struct Problem {
  ModelDims model;
  const double* x = nullptr;             // n × d
  const double* y = nullptr;             // n × k (squared loss)
  const std::int32_t* labels = nullptr;  // n (cross-entropy)
  std::int64_t n = 0, d = 0, k = 0;
  Loss loss = Loss::squared;
  Sampling sampling = Sampling::with_replacement;
  double label_noise = 0, weight_decay = 0, momentum = 0;
  /// A minibatch loss above it (or not finite) stops the run.
  double divergence_limit = 0;
  std::uint64_t seed = 0;
};

/// The Problem of a sweep of `model` on `data` with `config`, pointing at
/// the data's host arrays (the GPU engine points it at its device copies).
inline Problem make_problem(const Model& model, const Dataset& data, const SweepConfig& config,
                            double divergence_limit) {
  Problem p;
  p.model = model_dims(model);
  p.x = data.x.data();
  p.y = data.y.empty() ? nullptr : data.y.data();
  p.labels = data.labels.empty() ? nullptr : data.labels.data();
  p.n = data.n;
  p.d = data.d;
  p.k = data.k;
  p.loss = config.loss;
  p.sampling = config.sampling;
  p.label_noise = config.label_noise;
  p.weight_decay = config.weight_decay;
  p.momentum = config.momentum;
  p.divergence_limit = divergence_limit;
  p.seed = config.seed;
  return p;
}

struct RunSpec {
  std::int64_t batch_size = 0;
  double lr = 0;
  std::uint32_t replica = 0;
};

/// One run's buffers: act_size, widest, widest and P entries. Sampling
/// without replacement needs none: its permutation is evaluated per row.
struct RunScratch {
  Strided<double> acts, delta, delta_prev, grad;
};

enum class Stop : int { none = 0, minibatch_loss = 1, weights = 2 };

/// What a segment of steps did to one run.
struct Outcome {
  std::int64_t steps = 0;  // updates made
  std::int64_t step = -1;  // where it diverged, or −1
  Stop why = Stop::none;
  double loss = 0;         // the minibatch loss at that step
};

GN_HOST_DEVICE inline bool is_finite(double value) { return std::isfinite(value); }

// ---- Randomness: core/random.hpp's sweep streams, as the CPU engine draws them ----

/// The row of slot `slot` of batch `step`.
GN_HOST_DEVICE inline std::int64_t batch_row(const Problem& p, const RunSpec& run, std::int64_t step,
                                             std::int64_t slot) {
  const std::int64_t b = run.batch_size;
  switch (p.sampling) {
    case Sampling::with_replacement:
      return detail::replacement_row(p.seed, run.replica, step, slot, p.n);
    case Sampling::without_replacement:
      return detail::reshuffled_batch(p.seed, run.replica, step, b, p.n).row(slot);
    case Sampling::fixed:
      break;
  }
  return (step * b + slot) % p.n;
}

// ---- One sample ---------------------------------------------------------------------

/// Forward and backward pass of sample `row` (slot `slot` of batch `step`) at
/// θ: adds its gradient to s.grad and returns its loss (½‖f − y‖² or the
/// softmax cross-entropy; y with label noise when asked).
GN_HOST_DEVICE inline double sample_gradient(const Problem& p, const RunSpec& run,
                                             Strided<double> theta, std::int64_t step,
                                             std::int64_t slot, std::int64_t row,
                                             detail::LabelNoise& noise, RunScratch& s) {
  const ModelDims& m = p.model;
  const double* x_row = p.x + row * p.d;
  const int last = m.num_layers - 1;

  // Forward: a_{l+1} = W_l a_l (+ b_l), a_0 the sample's inputs.
  for (int l = 0; l < m.num_layers; ++l) {
    const LayerDims& layer = m.layers[l];
    const std::int64_t in_at = m.act_offset[l];
    const std::int64_t out_at = m.act_offset[l + 1];
    for (std::int64_t o = 0; o < layer.out; ++o) {
      double z = 0.0;
      const std::int64_t w_row = layer.offset + o * layer.in;
      if (l == 0) {
        for (std::int64_t j = 0; j < layer.in; ++j) z += theta[w_row + j] * x_row[j];
      } else {
        for (std::int64_t j = 0; j < layer.in; ++j) z += theta[w_row + j] * s.acts[in_at + j];
      }
      if (layer.bias) z += theta[layer.offset + layer.out * layer.in + o];
      s.acts[out_at + o] = z;
    }
  }

  // Output errors δ_L and the loss, by the loss's own error row; real
  // targets (with label noise when asked) wait in `previous`, which the
  // backward pass does not need yet.
  const std::int64_t k = p.k;
  const Strided<double> f{&s.acts[m.act_offset[last + 1]], s.acts.stride};
  Strided<double> delta = s.delta, previous = s.delta_prev;
  const double loss = losses::visit_loss(p.loss, [&](auto l) {
    using L = decltype(l);
    std::int32_t label = 0;
    if constexpr (L::targets == TargetKind::real) {
      for (std::int64_t o = 0; o < k; ++o) {
        double target = p.y[row * k + o];
        if (p.label_noise > 0) target += p.label_noise * noise.get(p.seed, run.replica, step, slot * k + o);
        previous[o] = target;
      }
    } else {
      label = p.labels[row];
    }
    return L::error_row(f, previous, label, k, delta);
  });

  // Backward: the layer's gradient += δ_l a_lᵀ (and δ_l for the bias), then
  // δ_{l−1} = W_lᵀ δ_l.
  for (int l = last; l >= 0; --l) {
    const LayerDims& layer = m.layers[l];
    const std::int64_t in_at = m.act_offset[l];
    for (std::int64_t o = 0; o < layer.out; ++o) {
      const double d = delta[o];
      const std::int64_t g_row = layer.offset + o * layer.in;
      if (l == 0) {
        for (std::int64_t j = 0; j < layer.in; ++j) s.grad[g_row + j] += d * x_row[j];
      } else {
        for (std::int64_t j = 0; j < layer.in; ++j) s.grad[g_row + j] += d * s.acts[in_at + j];
      }
      if (layer.bias) s.grad[layer.offset + layer.out * layer.in + o] += d;
    }
    if (l == 0) break;
    for (std::int64_t j = 0; j < layer.in; ++j) {
      double sum = 0.0;
      for (std::int64_t o = 0; o < layer.out; ++o) sum += theta[layer.offset + o * layer.in + j] * delta[o];
      previous[j] = sum;
    }
    const Strided<double> held = delta;
    delta = previous;
    previous = held;
  }
  return loss;
}

// ---- One step -------------------------------------------------------------------------

/// The minibatch gradient of batch `step` at θ into s.grad (the mean over the
/// batch, without weight decay); returns the minibatch loss.
GN_HOST_DEVICE inline double minibatch_gradient(const Problem& p, const RunSpec& run,
                                                Strided<double> theta, std::int64_t step,
                                                RunScratch& s) {
  const std::int64_t b = run.batch_size;
  for (std::int64_t q = 0; q < p.model.num_params; ++q) s.grad[q] = 0.0;
  detail::LabelNoise noise;
  double loss = 0;
  for (std::int64_t slot = 0; slot < b; ++slot) {
    const std::int64_t row = batch_row(p, run, step, slot);
    loss += sample_gradient(p, run, theta, step, slot, row, noise, s);
  }
  const auto count = static_cast<double>(b);
  for (std::int64_t q = 0; q < p.model.num_params; ++q) s.grad[q] /= count;
  return loss / count;
}

/// θ ← θ − λ(g + WD·θ), or with momentum v ← μv + (g + WD·θ), θ ← θ − λv
/// (velocity.base is null without momentum); returns ‖θ‖² after the update.
GN_HOST_DEVICE inline double sgd_update(const Problem& p, double lr, Strided<double> theta,
                                        Strided<double> velocity, Strided<double> grad) {
  double norm_sq = 0;
  for (std::int64_t q = 0; q < p.model.num_params; ++q) {
    double g = grad[q];
    if (p.weight_decay != 0) g += p.weight_decay * theta[q];
    if (velocity.base != nullptr) {
      velocity[q] = p.momentum * velocity[q] + g;
      theta[q] -= lr * velocity[q];
    } else {
      theta[q] -= lr * g;
    }
    norm_sq += theta[q] * theta[q];
  }
  return norm_sq;
}

/// Steps [from, to) of one run, stopping at the first sign of divergence as
/// the CPU engine does: a minibatch loss that is not finite or exceeds the
/// limit stops the run before that step's update; a non-finite ‖θ‖² after an
/// update stops it after.
GN_HOST_DEVICE inline Outcome advance_run(const Problem& p, const RunSpec& run,
                                          Strided<double> theta, Strided<double> velocity,
                                          std::int64_t from, std::int64_t to, RunScratch& s) {
  Outcome outcome;
  for (std::int64_t step = from; step < to; ++step) {
    const double loss = minibatch_gradient(p, run, theta, step, s);
    if (!is_finite(loss) || loss > p.divergence_limit) {
      outcome.steps = step - from;
      outcome.step = step;
      outcome.why = Stop::minibatch_loss;
      outcome.loss = loss;
      return outcome;
    }
    const double norm_sq = sgd_update(p, run.lr, theta, velocity, s.grad);
    if (!is_finite(norm_sq)) {
      outcome.steps = step + 1 - from;
      outcome.step = step;
      outcome.why = Stop::weights;
      outcome.loss = loss;
      return outcome;
    }
  }
  outcome.steps = to - from;
  return outcome;
}

// ---- All runs, interleaved (the GPU engine's layout) -------------------------------

/// Scratch doubles per run: activations, two δ buffers, the gradient.
GN_HOST_DEVICE inline std::int64_t scratch_per_run(const ModelDims& dims) {
  return dims.act_size + 2 * dims.widest + dims.num_params;
}

/// Every run's state, interleaved: entry i of run r at [i·runs + r] in θ, the
/// velocities (null without momentum) and the scratch (scratch_per_run
/// entries per run): O(runs · P), whatever the sampling.
struct InterleavedRuns {
  const RunSpec* specs = nullptr;
  std::int64_t runs = 0;
  double* theta = nullptr;
  double* velocity = nullptr;
  double* scratch = nullptr;
  const std::uint8_t* diverged = nullptr;  // runs with 1 are left alone
  Outcome* outcomes = nullptr;
};

/// Steps [from, to) of run `run` of `all` (what one GPU thread does).
GN_HOST_DEVICE inline void advance_interleaved(const Problem& p, const InterleavedRuns& all,
                                               std::int64_t run, std::int64_t from,
                                               std::int64_t to) {
  if (all.diverged[run] != 0) {
    all.outcomes[run] = Outcome{};
    return;
  }
  const std::int64_t runs = all.runs;
  const ModelDims& dims = p.model;
  RunScratch s;
  std::int64_t at = 0;
  s.acts = {all.scratch + at * runs + run, runs};
  at += dims.act_size;
  s.delta = {all.scratch + at * runs + run, runs};
  at += dims.widest;
  s.delta_prev = {all.scratch + at * runs + run, runs};
  at += dims.widest;
  s.grad = {all.scratch + at * runs + run, runs};
  const Strided<double> theta{all.theta + run, runs};
  const Strided<double> velocity{all.velocity == nullptr ? nullptr : all.velocity + run, runs};
  all.outcomes[run] = advance_run(p, all.specs[run], theta, velocity, from, to, s);
}

/// Run major (run · P + q) to interleaved (q · runs + run), and back.
inline void interleave(const double* by_run, double* by_param, std::int64_t runs,
                       std::int64_t params) {
  for (std::int64_t run = 0; run < runs; ++run) {
    for (std::int64_t q = 0; q < params; ++q) by_param[q * runs + run] = by_run[run * params + q];
  }
}

inline void deinterleave(const double* by_param, double* by_run, std::int64_t runs,
                         std::int64_t params) {
  for (std::int64_t run = 0; run < runs; ++run) {
    for (std::int64_t q = 0; q < params; ++q) by_run[run * params + q] = by_param[q * runs + run];
  }
}

}  // namespace gradnoise::sweep_step
