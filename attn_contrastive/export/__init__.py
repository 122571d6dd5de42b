"""A finished run's networks in other frameworks' formats: torchvision, ONNX, a Hugging
Face folder (``python -m attn_contrastive.export``), and the names they share.

  torch_names   the project's variables under PyTorch's names, and back (NumPy only)
  collect       a run's parts as named tensors; the torchvision export's files
  torch_models  torchvision's ResNet and a small PyTorch module per head; load()
  onnx_model    model.onnx traced from those modules: uint8 images in, dynamic batch
  model_card    the Hugging Face folder and its README.md from the run's results
  formats       export(run_dir, format, out)

``torch_models`` and ``onnx_model`` need PyTorch; the rest does not.
"""
