"""The one place that picks the Keras implementation; every module imports `keras` from here.

tf_keras (the Keras 2 API) rather than Keras 3: Keras 3's `fit` fails under
MultiWorkerMirroredStrategy on TF 2.21 (keras issue 20585), and on CPU tf_keras
builds DenseNet121 about 2.5x and trains it about 2x faster.
"""
import tf_keras as keras  # noqa: F401  (re-exported)
