from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as fh:
    long_description = fh.read()

setup(
    name="usertasks",
    version="0.1.0",
    description="User-triggered long-running tasks for Django, on Dramatiq: status pages, progress, cancel, artifacts.",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["usertasks", "usertasks.*"])
    + find_packages(where="compat", include=["user_tasks", "user_tasks.*"]),
    package_dir={"user_tasks": "compat/user_tasks"},
    include_package_data=True,
    zip_safe=False,
    install_requires=[
        "django>=4.2",
        "dramatiq[redis]>=1.17",
        "redis>=4.5",
        "django-dramatiq>=0.11",
    ],
    extras_require={
        "postgres": ["psycopg[binary]>=3.1"],
        "s3": ["django-storages[s3]>=1.14", "boto3>=1.28"],
        "rabbitmq": ["dramatiq[rabbitmq]>=1.17"],
        "celery": ["celery>=5.3", "djangorestframework>=3.14", "rules>=3.3"],
        "asgi": ["uvicorn>=0.23"],
    },
    classifiers=[
        "Framework :: Django",
        "Framework :: Django :: 4.2",
        "Framework :: Django :: 5.2",
        "Framework :: Django :: 6.0",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
)
