"""Fine-tunes an ImageNet-pretrained DenseNet121 on MNIST and other small image datasets."""
import os

# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notes) buries the training
# log; warnings and errors still show.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
