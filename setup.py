from setuptools import find_packages, setup

setup(
    name="angosd",
    version="0.1.0",
    description="An OCI Distribution v1.1 container registry daemon on Twisted",
    long_description=open("README.rst").read(),
    long_description_content_type="text/x-rst",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests*", "bench*"]) + ["twisted.plugins"],
    package_data={"angosd": ["py.typed"], "angosd.ui": ["static/*"]},
    install_requires=[
        "twisted[tls]>=24.7,<27",  # angosd.compat uses private names: tested up to 26.x
        "klein>=24.8",
        "treq>=24.9",
        "service-identity>=24.1",
        "pyopenssl>=24.2",
        "pyjwt[crypto]>=2.9",
        "cryptography>=38",  # Ed25519 signatures of air-gap bundles (angosd keygen, export --set, import)
        "prometheus-client>=0.20",
        "argon2-cffi>=23.1",
        "common-expression-language>=0.10",
    ],
    extras_require={
        "s3": ["botocore>=1.34"],  # SigV4 signing of S3 requests ([blob_store.s3]); transport is treq
        # [observability.tracing]: OpenTelemetry SDK and its OTLP/HTTP (protobuf) exporter
        "tracing": ["opentelemetry-sdk>=1.25", "opentelemetry-exporter-otlp-proto-http>=1.25"],
        "test": ["pytest>=8", "pytest-twisted>=1.14", "hypothesis>=6.100", "ruff", "mypy", "mypy-zope",
                 "playwright>=1.46", "moto[server]>=5.0", "botocore>=1.34", "ldaptor>=21.2",
                 "opentelemetry-sdk>=1.25", "opentelemetry-exporter-otlp-proto-http>=1.25", "opentelemetry-proto>=1.25",
                 "pyyaml"],
        # [auth.ldap]: LDAP / Active Directory users
        "ldap": ["ldaptor>=21.2"],
    },
    entry_points={"console_scripts": ["angosd = angosd.commands.main:main"]},
)
