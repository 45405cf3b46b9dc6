"""The HTTP layer (Flask only): ``app.create_app`` assembles the blueprints, ``wsgi`` serves them.

Views parse and check requests, then call the registry or the engine; neither of those imports
anything from here.
"""
