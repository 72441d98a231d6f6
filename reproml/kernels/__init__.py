"""Speed-only machinery: compiled CPU kernels for the two hot spots, each the same computation as
the plain PyTorch code it replaces (the same numbers to float rounding; tests/test_fast_path.py
holds them to reproml.reference and to float64).

  build.py                  compiles, caches and loads the C sources, or says why not
  lstm.py + lstm_cell.c     the meta-learner's first layer (MetaLearnerLSTM.layer1)
  block.py + block.c        a learner block: convolution, BatchNorm, pooling, ReLU (learner.plain_block)

The models choose them in one visible branch each (`Learner.features`, `MetaLearnerLSTM.step`);
where they cannot run (no compiler, another CPU, CUDA, REPROML_KERNELS=0) the plain code runs.
"""
