"""Streamlit page scripts of the dashboard (run by path through st.navigation, not imported)."""
