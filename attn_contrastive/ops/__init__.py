"""Performance kernels that the networks of ``models/`` are handed.

The networks describe architectures only and take their convolution module
and max pooling as arguments (flax's ``nn.Conv`` and ``nn.max_pool`` by
default). This package holds the faster paths for the CPU backend, which
XLA:CPU leaves slow for training:

* ``conv``: a drop-in ``lax.conv_general_dilated`` whose gradients on CPU are
  matmuls (im2col / col2im), with a space-to-depth path for strided stems;
* ``native`` and ``conv_wgrad.cc``: a C++ weight-gradient kernel (an XLA FFI
  custom call) for layers with few channels, compiled on first use;
* ``pool``: max pooling with an elementwise CPU gradient;
* ``layers``: maps a config's ``conv_impl`` to the convolution module and
  pooling function that the model builders hand to the networks.

On TPU and GPU every path here is XLA's own operation.
"""
