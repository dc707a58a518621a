# One image for every service of docker-compose.yml: the study driver, workers and the dashboard.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tuner ./tuner
COPY studies ./studies
RUN pip install --no-cache-dir .
# Checkpoints and models; mount a volume shared by all services so retried trials resume anywhere.
VOLUME /app/tuner-artifacts
ENTRYPOINT ["tuner"]
CMD ["--help"]
