"""Dataset augmentation: policy-guided diffusion (`offline_rl.augment.pgd`: the trajectory model, its guided
sampler and the model cache; `offline_rl.augment.synthetic`: named synthetic Minari datasets, `pgd_augment`)."""
