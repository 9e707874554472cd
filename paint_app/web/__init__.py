"""The painting canvas's page files (script, template, style), read by ``paint_app.web_canvas``."""
