"""Streamlit-side helpers: the only place for st.cache_resource / st.cache_data wrappers and shared widgets."""
