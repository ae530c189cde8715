#pragma once
/// \file
/// A seeded random source whose draws are identical on every platform and standard library
/// (std::uniform_real_distribution and std::normal_distribution are not specified bit for bit).

#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>
#include <sstream>

#include "state_stream.hpp"

namespace bilevel {

class random_source {
 public:
  explicit random_source(std::uint64_t seed) : engine_(seed) {}

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

  /// Uniform in [low, high).
  double uniform(double low, double high) { return low + (high - low) * uniform(); }

  /// Standard normal by the Box-Muller transform (one of the pair is kept for the next call).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = 1.0 - uniform();  // in (0, 1]: log is finite
    const double u2 = uniform();
    const double radius = std::sqrt(-2.0 * std::log(u1));
    spare_ = radius * std::sin(2.0 * std::numbers::pi * u2);
    has_spare_ = true;
    return radius * std::cos(2.0 * std::numbers::pi * u2);
  }

  /// Uniform integer in [0, n) without modulo bias.
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t limit = engine_.max() - engine_.max() % n;
    std::uint64_t draw = engine_();
    while (draw >= limit) draw = engine_();
    return draw % n;
  }

  /// Fisher-Yates shuffle with `below`, so the order depends only on the seed.
  template <class Container>
  void shuffle(Container& items) {
    for (std::uint64_t i = items.size(); i > 1; --i) {
      using std::swap;
      swap(items[i - 1], items[below(i)]);
    }
  }

  std::mt19937_64& engine() { return engine_; }
  const std::mt19937_64& engine() const { return engine_; }

  /// The engine's state in the standard's text form (the same on every library), and the
  /// normal draw kept for the next call: later draws continue exactly where they would have.
  void save_state(state_writer& out) const {
    out.write_text("random_source");
    std::ostringstream engine_text;
    engine_text << engine_;
    out.write_text(engine_text.str());
    out.write_bool(has_spare_);
    out.write_f64(spare_);
  }

  void load_state(state_reader& in) {
    in.expect_text("random_source", "component");
    std::istringstream engine_text(in.read_text("random engine state"));
    std::mt19937_64 engine;
    engine_text >> engine;
    if (!engine_text || !(engine_text >> std::ws).eof())
      in.fail("random engine state", "the text form of a mt19937_64", "something else");
    const bool has_spare = in.read_bool("has_spare");
    const double spare = in.read_f64("spare");
    if (has_spare && !std::isfinite(spare)) in.fail("spare", "finite", spare);
    engine_ = engine;
    has_spare_ = has_spare;
    spare_ = spare;
  }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace bilevel
