"""The recipes: configs over one runner that reproduce two papers with `keras_msam.SAMModel`.

Run any of them as `msam RECIPE [EXPERIMENT] [--field value ...]` (or `python -m recipes ...`, or
`python -m recipes.RECIPE ...`); `msam RECIPE --help` lists its experiments, variants and settings.

Recipes ("Towards Understanding Sharpness-Aware Minimization", ICML 2022):
    diag_nets       diagonal linear networks: ERM / SGD / n-SAM / 1-SAM, rho grid, switch, interpolation,
                    implicit bias (the theory in `recipes.implicit_bias`)
    relu_1d         a 1 -> 100 -> 1 ReLU net on 12 points: ERM vs SAM, kinks of the learned function
    resnet          PreAct ResNets on CIFAR-10 / CIFAR-100 (or synthetic images) with m-SAM
Recipe ("SGD with Large Step Sizes Learns Sparse Features", ICML 2023):
    large_step_sgd  a constant small step vs a large step decayed at p; feature sparsity, Jacobian rank
Tool:
    tune            KerasTuner search over rho and m on the tasks above

The machinery they share:
    config          dataclass configs -> command lines, named experiments and variants
    runner          the compiled step loop (in-memory tasks) and `fit` for datasets
    outputs         JSON / CSV / PNG writers and the progress display
    tasks/          each task's data and model, defined once (diag_net, relu_1d, teacher_student, images)
    cli             the `msam` command
"""

from recipes.startup import quiet_tensorflow_import

quiet_tensorflow_import()
