# The trainer in a container, for Vertex AI, Kubernetes or any machine with Docker:
#
#   docker build -t densenet-finetune .
#   docker run --gpus=all densenet-finetune --flagfile=configs/mnist_rgb.cfg --num_gpus=1
#
# The arguments are python -m trainer.main's flags. The run folder is runs/NAME inside the
# container unless --run_dir names a gs:// folder or a mounted one (see BUILD.md).
#
# TensorFlow's GPU image brings TensorFlow with CUDA and cuDNN, and its TensorFlow meets
# the package's pin (tensorflow==2.21.*), so pip keeps it: the image needs no and-cuda.
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}

WORKDIR /opt/densenet
# What the package is built from, apart from configs/: editing a config reuses this layer.
COPY pyproject.toml setup.cfg README.md ./
COPY trainer/ trainer/
# gcs: gs:// run folders, which runs on Vertex AI and on several Kubernetes nodes share.
RUN python -m pip install --no-cache-dir '.[gcs]'
COPY configs/ configs/

# Container logs arrive through a pipe, which Python would otherwise buffer.
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["python", "-m", "trainer.main"]
