"""Long-tailed visual recognition with extra samples for the rare classes (`main.py --classify`).

- models: the classifiers (CIFAR ResNet-32, torchvision ResNets, a small CNN).
- losses: the training losses.
- data: real + extra training images, deterministic batches, crop / flip augmentation.
- sources: where extra images come from (a saved set, a trained diffusion run).
- feature_diffusion: the class-conditional MLP diffusion model on penultimate features.
- feature_aug: --feature_aug, re-training the last layer on real + drawn features.
- loop: training with exact resumption and signal handling.
- reports: top-1 overall, many / medium / few and per class; the result files.
- classify: the entry point that checks every input and runs the rest.
"""
