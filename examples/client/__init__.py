"""The tutorial's last step: the chat of "who is here" on the browser client, trio-channels.js."""
