"""Fine-tunes an ImageNet-pretrained DenseNet121 on MNIST and other small image datasets."""
