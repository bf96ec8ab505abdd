"""The bundled example: card transactions of users at merchants, features for a fraud model."""
