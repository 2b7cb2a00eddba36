"""Helpers the tests and the benchmarks share: the timm reference (a randomised timm twin of a
model, its outputs captured with hooks, Chefer et al.'s rule with autograd), and a local HTTP
server for downloads. They import torch and timm, which every backend's test run installs."""
