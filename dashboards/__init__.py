"""The Streamlit ops dashboard and the Kibana saved objects."""
