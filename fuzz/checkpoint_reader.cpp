// Fuzz target: restoring a checkpoint from arbitrary bytes into a program, an optimizer, methods
// with state of every kind (random source, step sizes, nested optimizers) and the training
// progress. A data_error is the expected answer; a restored program must have finite
// parameters, and a refused input must leave everything as it was.
//
// The first input byte chooses what the rest is: even, a whole file; odd, a payload that is
// given a valid header and checksum, so that mutations reach the component readers instead of
// stopping at the checksum.

#include <cstdlib>
#include <span>

#include "bilevel/bilevel.hpp"
#include "fuzz_target.hpp"

namespace {

using net_type =
    bilevel::program<double, bilevel::softmax_cross_entropy, bilevel::leaky_relu, bilevel::identity>;

struct components {
  net_type net{{3, 4, 4, 2}, {bilevel::leaky_relu(0.1), bilevel::leaky_relu(0.2), bilevel::identity{}}};
  bilevel::adam<double> optimizer{{}, net.parameter_count(), net.weight_count()};
  bilevel::altmin<double> altmin;
  bilevel::mac<double> mac;
  bilevel::lpom<double> lpom;
  bilevel::ep<double> ep;
  bilevel::training_progress progress{1};

  std::vector<std::uint8_t> bytes() const {
    return bilevel::checkpoint_bytes(net, optimizer, altmin, mac, lpom, ep, progress);
  }
  void restore(std::span<const std::uint8_t> file) {
    bilevel::restore_checkpoint(file, "fuzz", net, optimizer, altmin, mac, lpom, ep, progress);
  }
};

/// Components that have trained a step, so every optional part of the state is present.
components trained() {
  components c;
  bilevel::random_source random(4);
  c.net.initialize(bilevel::init_scheme::glorot_uniform, random);
  bilevel::Matrix<double> x = bilevel::Matrix<double>::Random(3, 5);
  bilevel::Matrix<double> y = bilevel::Matrix<double>::Zero(2, 5);
  y.row(0).setOnes();
  bilevel::Vector<double> gradient;
  bilevel::bp<double>().gradient(c.net, x, y, gradient);
  c.optimizer.step(c.net.parameters(), gradient);
  auto copy = c.net;
  c.altmin.train_step(copy, x, y);
  c.mac.train_step(copy, x, y);
  c.lpom.train_step(copy, x, y);
  c.progress.epoch = 2;
  static_cast<void>(c.progress.random.normal());
  return c;
}

}  // namespace

std::vector<std::vector<std::uint8_t>> fuzz_seeds() {
  std::vector<std::vector<std::uint8_t>> seeds;
  for (const components& c : {components{}, trained()}) {
    const std::vector<std::uint8_t> file = c.bytes();
    std::vector<std::uint8_t> whole{0};
    whole.insert(whole.end(), file.begin(), file.end());
    std::vector<std::uint8_t> payload{1};
    payload.insert(payload.end(), file.begin() + bilevel::checkpoint_header_size, file.end() - 4);
    seeds.push_back(whole);
    seeds.push_back(payload);
  }
  return seeds;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::vector<std::uint8_t> file(data + 1, data + size);
  if (data[0] % 2 == 1) file = bilevel::detail::frame_checkpoint(file);  // valid header and CRC
  static components target;
  const std::vector<std::uint8_t> before = target.bytes();
  try {
    target.restore(file);
    if (!target.net.parameters().allFinite()) std::abort();
  } catch (const bilevel::data_error&) {
    if (target.bytes() != before) std::abort();  // a refused file changed something
  }
  return 0;
}
