# The image the deploy/ Indexed Job runs. Build it and push it to your own registry:
#   docker build -t crazureblue.azurecr.io/acr-mirror:0.1.0 . && docker push crazureblue.azurecr.io/acr-mirror:0.1.0
FROM python:3.12-slim
COPY pyproject.toml README.md /src/
COPY mirror /src/mirror
COPY manifests-rewriter /src/manifests-rewriter
RUN pip install --no-cache-dir /src && rm -rf /src
USER 65532:65532
ENTRYPOINT ["acr-mirror"]
