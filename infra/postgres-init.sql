-- Second database for MLflow next to Prefect's (docker-compose.yml; documented only).
CREATE DATABASE mlflow;
