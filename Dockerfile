# One image for every service of docker-compose.yml: the study driver, workers and the dashboard.
# The tag names a patch release, so a rebuild gets the same Python.
FROM python:3.11.13-slim
ENV PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 --user-group tuner
COPY pyproject.toml README.md /src/
COPY tuner /src/tuner
RUN pip install --no-cache-dir /src && rm -rf /src
# Study files are not in the image: mount them on /app/studies (docker-compose.yml mounts ./studies).
# Checkpoints and models go to a volume shared by all services, so retried trials resume anywhere.
WORKDIR /app
RUN mkdir studies tuner-artifacts && chown tuner:tuner /app /app/tuner-artifacts
USER tuner
VOLUME /app/tuner-artifacts
ENTRYPOINT ["tuner"]
CMD ["--help"]
