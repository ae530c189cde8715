// A complete first program: load MNIST, build the paper's MLP, train it with Fenchel BP and
// Adam, evaluate, save a checkpoint. Usage: first_program [data directory, default data/mnist]
#include <bilevel/bilevel.hpp>

#include <iostream>
#include <string>
#include <utility>

int main(int argc, char** argv) {
  using namespace bilevel;
  const std::string directory = argc > 1 ? argv[1] : "data/mnist";
  auto files = load_mnist<float>(directory, 784);  // idx files, plain or .gz
  // Inputs as columns (784 x N), targets one-hot (10 x N); the images move, not copied.
  const auto train = make_dataset<float>(std::move(files.train.images), files.train.labels, 10);
  const auto test = make_dataset<float>(std::move(files.test.images), files.test.labels, 10);

  auto net = make_mlp<float, relu>({784, 256, 128, 64, 10});  // softmax cross-entropy on logits
  random_source random(1);
  net.initialize(init_scheme::glorot_uniform, random);
  fenchel_bp<float> method(0.01f);  // beta per sample (docs/methods.md §1)
  adam<float> optimizer({.learning_rate = 1e-3f}, net.parameter_count(), net.weight_count());
  trainer loop(net, method, optimizer, /* batch */ 50, /* shuffling seed */ 2);

  // The library's run loop: epochs, evaluation, checkpoints; what to print is a callback.
  run_record record;  // best epoch, totals: checkpointed with the rest
  run_callbacks<float> callbacks;
  callbacks.epoch_finished = [](const epoch_result& epoch) {
    std::cout << "epoch " << epoch.epoch << ": loss " << epoch.training.loss << ", test error "
              << epoch.test_error << '\n';
  };
  // Everything a resumed run needs; load_checkpoint restores it (README "Reliability").
  callbacks.save = [&] {
    save_checkpoint("first_program.ckpt", net, optimizer, method, loop.progress(), record);
  };
  run_epochs(loop, {.train = &train, .test = &test}, {.epochs = 2, .evaluate_train = false},
             record, callbacks);
}
