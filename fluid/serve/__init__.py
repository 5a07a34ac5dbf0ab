"""``fluid serve``: an interactive page where one types a prompt and watches the image form.

``app`` (routes, event streams, running the server), ``worker`` (served models, the
request queue and its worker thread), ``requests`` (checking what a page sends),
``load`` (the load-test client) and ``page.html`` (the page itself).
"""
